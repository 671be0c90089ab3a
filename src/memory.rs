//! Keep the sidecar's resident set to the code it actually runs.
//!
//! Most of a sidecar's resident memory is not heap but program text. Start-up runs a lot of
//! code that never runs again (argument and config parsing, certificate parsing, logger and
//! exporter set-up), and on every read fault in a file-backed mapping the kernel maps up to
//! 64 KiB around the faulting page ("fault-around"), so after start-up almost the whole binary
//! is resident. [`release_startup_text`] unmaps the executable pages once the proxy is up
//! (`MADV_DONTNEED`); from then on only the code that runs is faulted back in. The pages stay
//! in the page cache, shared with every other process mapping the same file: what shrinks is
//! this process's resident share. The cost is one minor fault per 64 KiB of code the first
//! time it runs again, and nothing in steady state. See docs/BENCHMARKS.md.
//!
//! Only read-only segments of loaded objects (the executable and its shared libraries) are
//! released, and only where their mapping holds no private page, in memory (`Anonymous:`) or
//! swapped out (`Swap:`): their contents are exactly the file's, so dropping and re-reading
//! them changes nothing but residency. Relocated constants (RELRO) sit in writable segments
//! and hold private pages; a debugger's software breakpoint makes one too: those are left
//! alone. Other threads are running by then, so the segments come from `dl_iterate_phdr`,
//! which holds the dynamic loader's lock while it reports them: no object can be loaded or
//! unloaded under us (a `dlopen`, e.g. of an NSS module by `getaddrinfo`, maps a whole file
//! before it overlays its segments), and a reported segment stays mapped throughout.

/// Unmap the read-only file-backed pages (code and constants) of the executable and its
/// libraries so that only what runs from now on is resident. Returns how many segments were
/// released; an error is harmless (the process only keeps more pages resident) and is for
/// the caller to log.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // the crate's only unsafe: the loader walk and its madvise, see SAFETY
pub fn release_startup_text() -> std::io::Result<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let mut walk = Walk {
        pristine: pristine_read_only_mappings(&smaps),
        page: usize::try_from(page)
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096),
        released: 0,
        failed: None,
    };
    // SAFETY: `release_segments` only reads the `dl_phdr_info` the loader hands it and the
    // `Walk` we pass, which outlives the call; it does not unwind (no panicking code in it).
    unsafe {
        libc::dl_iterate_phdr(Some(release_segments), std::ptr::from_mut(&mut walk).cast());
    }
    match walk.failed {
        Some(e) if walk.released == 0 => Err(e),
        _ => Ok(walk.released),
    }
}

#[cfg(not(target_os = "linux"))]
pub fn release_startup_text() -> std::io::Result<usize> {
    Ok(0)
}

#[cfg(target_os = "linux")]
struct Walk {
    pristine: Vec<(usize, usize)>,
    page: usize,
    released: usize,
    failed: Option<std::io::Error>,
}

/// `dl_iterate_phdr` callback: `madvise(MADV_DONTNEED)` each non-writable loadable segment of
/// one object whose pages lie within one pristine mapping.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
unsafe extern "C" fn release_segments(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: `data` is the `&mut Walk` of `release_startup_text`, alive for the whole walk,
    // and `info` points to the loader's description of one loaded object, valid during this
    // call, whose `dlpi_phdr` has `dlpi_phnum` entries.
    let (walk, info) = unsafe { (&mut *data.cast::<Walk>(), &*info) };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: as above.
    let headers =
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    for h in headers {
        if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 {
            continue;
        }
        let (Some(first), Some(last)) = (
            usize::try_from(info.dlpi_addr.wrapping_add(h.p_vaddr)).ok(),
            usize::try_from(
                info.dlpi_addr
                    .wrapping_add(h.p_vaddr)
                    .wrapping_add(h.p_memsz),
            )
            .ok(),
        ) else {
            continue;
        };
        let start = first & !(walk.page - 1);
        let end = last.div_ceil(walk.page) * walk.page;
        if end <= start || !walk.pristine.iter().any(|&(a, b)| a <= start && end <= b) {
            continue;
        }
        // SAFETY: [start, end) is a read-only segment of an object the loader holds mapped
        // (its lock is held during this walk), inside a private file mapping that had no
        // private page: MADV_DONTNEED only drops page-table entries, and the next access
        // re-reads the same bytes from the page cache. No Rust object lives in it.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if rc == 0 {
            walk.released += 1;
        } else {
            // e.g. EINVAL for pages locked by mlockall: keep those, release the rest.
            walk.failed = Some(std::io::Error::last_os_error());
        }
    }
    0
}

/// Address ranges of the read-only private file mappings (`r-xp` code, `r--p` constants; not
/// `[vdso]`, not anonymous memory) that hold no private page, neither in memory
/// (`Anonymous:`) nor swapped out (`Swap:`), from the text of `/proc/<pid>/smaps`.
fn pristine_read_only_mappings(smaps: &str) -> Vec<(usize, usize)> {
    struct Candidate {
        range: (usize, usize),
        anonymous: Option<bool>,
        swap: Option<bool>,
    }
    let zero = |v: &str| v.trim().strip_suffix("kB").map(str::trim) == Some("0");
    let mut found = Vec::new();
    let mut current: Option<Candidate> = None;
    let mut finish = |c: Option<Candidate>| {
        if let Some(Candidate {
            range,
            anonymous: Some(true),
            swap: Some(true),
        }) = c
        {
            found.push(range);
        }
    };
    for line in smaps.lines() {
        if let Some(header) = mapping_header(line) {
            finish(current.take());
            current = header.map(|range| Candidate {
                range,
                anonymous: None,
                swap: None,
            });
        } else if let Some(c) = current.as_mut() {
            if let Some(v) = line.strip_prefix("Anonymous:") {
                c.anonymous = Some(zero(v));
            } else if let Some(v) = line.strip_prefix("Swap:") {
                c.swap = Some(zero(v));
            }
        }
    }
    finish(current.take());
    found
}

/// For a mapping's header line, `Some(Some(range))` when it is a read-only private file
/// mapping, `Some(None)` for any other mapping; `None` for the per-mapping detail lines.
fn mapping_header(line: &str) -> Option<Option<(usize, usize)>> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    let path = fields.nth(3).unwrap_or("");
    let read_only_private = matches!(perms, "r-xp" | "r--p");
    Some((read_only_private && path.starts_with('/') && end > start).then_some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_only_pristine_read_only_file_mappings() {
        let smaps = "\
55b9a2434000-55b9a25dd000 r--p 00000000 fe:00 5326413  /usr/bin/tracseq-proxy
Rss:                 880 kB
Anonymous:             0 kB
Swap:                  0 kB
55b9a25dd000-55b9a2ba5000 r-xp 001a8000 fe:00 5326413  /usr/bin/tracseq-proxy
Rss:                5152 kB
Anonymous:             0 kB
Swap:                  0 kB
55b9a2ba5000-55b9a2bd2000 r--p 0076f000 fe:00 5326413  /usr/bin/tracseq-proxy
Anonymous:           180 kB
Swap:                  0 kB
55b9a2bd2000-55b9a2bd7000 r--p 0079b000 fe:00 5326413  /usr/bin/tracseq-proxy
Anonymous:             0 kB
Swap:                 20 kB
55b9a2bd7000-55b9a2bd9000 rw-p 0079f000 fe:00 5326413  /usr/bin/tracseq-proxy
Anonymous:             0 kB
Swap:                  0 kB
55b9cd9c9000-55b9cdbb3000 rw-p 00000000 00:00 0        [heap]
Anonymous:          1936 kB
Swap:                  0 kB
7f974a30c000-7f974a462000 r-xp 00026000 fe:00 1234     /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
Swap:                  0 kB
7f0000000000-7f0000001000 r-xp 00000000 00:00 0
Anonymous:             0 kB
Swap:                  0 kB
7fff1b5f4000-7fff1b5f6000 r-xp 00000000 00:00 0        [vdso]
Anonymous:             0 kB
Swap:                  0 kB
";
        assert_eq!(
            pristine_read_only_mappings(smaps),
            vec![
                (0x55b9a2434000, 0x55b9a25dd000),
                (0x55b9a25dd000, 0x55b9a2ba5000),
                (0x7f974a30c000, 0x7f974a462000)
            ]
        );
        // A mapping whose detail lines are cut off is not trusted.
        let cut = "55b9a25dd000-55b9a2ba5000 r-xp 001a8000 fe:00 5326413  /usr/bin/tracseq-proxy\nAnonymous: 0 kB\n";
        assert!(pristine_read_only_mappings(cut).is_empty());
    }

    /// Resident kB of the pristine read-only file mappings.
    fn resident_kb() -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let ranges = pristine_read_only_mappings(&smaps);
        let (mut total, mut counting) = (0, false);
        for line in smaps.lines() {
            if let Some(header) = mapping_header(line) {
                counting = header.is_some_and(|r| ranges.contains(&r));
            } else if let (true, Some(kb)) = (counting, line.strip_prefix("Rss:")) {
                total += kb
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .expect("kB");
            }
        }
        total
    }

    #[test]
    fn releases_this_process_text_and_keeps_running() {
        // The test binary has its own code and constants, and libc's. Afterwards only the code
        // that runs again is resident, and it keeps running: the pages fault back in from the
        // page cache.
        let before = resident_kb();
        let released = release_startup_text().expect("madvise on our own text");
        let after = resident_kb();
        assert!(released >= 2, "released {released} mappings");
        // Other tests of this binary run in parallel and fault code back in meanwhile; a
        // release that did nothing would leave `after` at `before`.
        assert!(
            after * 4 < before * 3,
            "resident pristine read-only pages: {before} kB before, {after} kB after"
        );
        let again = release_startup_text().expect("a second time");
        assert_eq!(again, released);
    }
}
