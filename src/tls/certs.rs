//! `tracseq-proxy certs init|issue|inspect`: the development PKI (rcgen, ECDSA P-256). A CA
//! and one certificate per service with SANs `spiffe://<trust-domain>/<name>` and DNS `<name>`,
//! usable as both server and client (every sidecar is both). The same code is an in-memory
//! API (`DevCa`) for the demo and the tests. Private keys are written 0600.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::config::cli::{CertsArgs, CertsCommand};

/// Certificates start this long in the past, so a peer whose clock is slightly behind
/// accepts a certificate made a moment ago.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A development CA that can issue service certificates.
pub struct DevCa {
    trust_domain: String,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// A certificate and its private key, PEM. `Debug` never shows the key.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Parameters of a service certificate valid from `not_before` to `not_after`; tests use this
/// to make expired or not-yet-valid certificates.
pub fn leaf_params(
    trust_domain: &str,
    service: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, service);
    dn.push(DnType::OrganizationName, "TracSeq dev");
    p.distinguished_name = dn;
    p.subject_alt_names = vec![
        SanType::URI(
            format!("spiffe://{trust_domain}/{service}")
                .try_into()
                .context("service name is not a valid URI part")?,
        ),
        SanType::DnsName(
            service
                .try_into()
                .context("service name is not a DNS name")?,
        ),
    ];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(random_serial());
    p.not_before = not_before;
    p.not_after = not_after;
    Ok(p)
}

fn ca_params(trust_domain: &str, validity: Duration) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("TracSeq dev CA ({trust_domain})"),
    );
    dn.push(DnType::OrganizationName, "TracSeq dev");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(random_serial());
    p.not_before = now() - BACKDATE;
    p.not_after = now() + validity;
    p
}

impl DevCa {
    pub fn new(trust_domain: &str, validity: Duration) -> anyhow::Result<DevCa> {
        let key = KeyPair::generate().context("generate CA key")?;
        let params = ca_params(trust_domain, validity);
        let cert = params.self_signed(&key).context("sign CA certificate")?;
        Ok(DevCa {
            trust_domain: trust_domain.to_string(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its PEM certificate and key (for `certs issue`).
    pub fn load(trust_domain: &str, ca_pem: &str, key_pem: &str) -> anyhow::Result<DevCa> {
        let key = KeyPair::from_pem(key_pem).context("CA key")?;
        let issuer = Issuer::from_ca_cert_pem(ca_pem, key).context("CA certificate")?;
        Ok(DevCa {
            trust_domain: trust_domain.to_string(),
            cert_pem: ca_pem.to_string(),
            issuer,
        })
    }

    pub fn ca_pem(&self) -> String {
        self.cert_pem.clone()
    }

    pub fn ca_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn issue(&self, service: &str, validity: Duration) -> anyhow::Result<IssuedCert> {
        let params = leaf_params(
            &self.trust_domain,
            service,
            now() - BACKDATE,
            now() + validity,
        )?;
        self.sign(&params)
    }

    /// Sign any parameters with a fresh P-256 key.
    pub fn sign(&self, params: &CertificateParams) -> anyhow::Result<IssuedCert> {
        let key = KeyPair::generate().context("generate key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("sign certificate")?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Write `contents` to `path`, creating it with `mode` (and fixing the mode if it existed).
pub fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes ca.pem, <service>.pem, <service>-key.pem (0600) into dir.
pub fn write_service(
    dir: &Path,
    ca: &DevCa,
    service: &str,
    cert: &IssuedCert,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_file(&dir.join("ca.pem"), &ca.ca_pem(), 0o644)?;
    write_file(&dir.join(format!("{service}.pem")), &cert.cert_pem, 0o644)?;
    write_file(
        &dir.join(format!("{service}-key.pem")),
        &cert.key_pem,
        0o600,
    )?;
    Ok(())
}

fn validity(s: &str, flag: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(s).with_context(|| format!("{flag}: invalid duration \"{s}\""))
}

fn check_service(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !ok {
        bail!("--service: \"{name}\" is not a DNS label (lowercase letters, digits, '-', '.')");
    }
    Ok(())
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.command {
        CertsCommand::Init {
            dir,
            trust_domain,
            services,
            validity: v,
            ca_validity,
        } => {
            let v = validity(&v, "--validity")?;
            let ca_v = validity(&ca_validity, "--ca-validity")?;
            services.iter().try_for_each(|s| check_service(s))?;
            if dir.join("ca-key.pem").exists() {
                bail!(
                    "{}: a CA already exists there (use `certs issue` to add a service)",
                    dir.join("ca-key.pem").display()
                );
            }
            let ca = DevCa::new(&trust_domain, ca_v)?;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            write_file(&dir.join("ca-key.pem"), &ca.ca_key_pem(), 0o600)?;
            write_file(&dir.join("ca.pem"), &ca.ca_pem(), 0o644)?;
            println!("wrote {}/ca.pem and ca-key.pem", dir.display());
            for s in &services {
                let c = ca.issue(s, v)?;
                write_service(&dir, &ca, s, &c)?;
                println!(
                    "wrote {0}/{s}.pem and {s}-key.pem (spiffe://{trust_domain}/{s})",
                    dir.display()
                );
            }
            Ok(())
        }
        CertsCommand::Issue {
            dir,
            trust_domain,
            service,
            validity: v,
        } => {
            let v = validity(&v, "--validity")?;
            check_service(&service)?;
            let read = |f: &str| {
                let p = dir.join(f);
                std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
            };
            let ca = DevCa::load(&trust_domain, &read("ca.pem")?, &read("ca-key.pem")?)?;
            let c = ca.issue(&service, v)?;
            write_service(&dir, &ca, &service, &c)?;
            println!(
                "wrote {0}/{service}.pem and {service}-key.pem",
                dir.display()
            );
            Ok(())
        }
        CertsCommand::Inspect { file } => {
            let text = inspect(&file)?;
            print!("{text}");
            Ok(())
        }
    }
}

/// Human-readable facts about every certificate in a PEM file.
pub fn inspect(file: &Path) -> anyhow::Result<String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    use std::fmt::Write as _;
    let pem = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate file", file.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate found", file.display());
    }
    let mut out = String::new();
    for der in &certs {
        let (_, x) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| anyhow::anyhow!("{}: invalid certificate: {e}", file.display()))?;
        let (uris, dns) = super::identity::sans(der);
        let sans: Vec<String> = uris
            .iter()
            .map(|u| format!("URI:{u}"))
            .chain(dns.iter().map(|d| format!("DNS:{d}")))
            .collect();
        let not_after = x.validity().not_after.timestamp();
        let left = not_after - now().unix_timestamp();
        let _ = writeln!(out, "subject:    {}", x.subject());
        let _ = writeln!(out, "issuer:     {}", x.issuer());
        let _ = writeln!(out, "serial:     {}", x.raw_serial_as_string());
        let _ = writeln!(
            out,
            "SANs:       {}",
            if sans.is_empty() {
                "(none)".into()
            } else {
                sans.join(", ")
            }
        );
        let _ = writeln!(out, "not before: {}", x.validity().not_before);
        let _ = writeln!(
            out,
            "not after:  {} ({})",
            x.validity().not_after,
            if left < 0 {
                "EXPIRED".to_string()
            } else {
                format!("expires in {} days", left / 86_400)
            }
        );
        let _ = writeln!(out, "CA:         {}", x.is_ca());
        let _ = writeln!(out, "sha256:     {}", super::identity::sha256_hex(der));
        out.push('\n');
    }
    Ok(out)
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}
