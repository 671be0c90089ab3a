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
//! Only mappings that are read-only (code and constants), file-backed and hold no private
//! (copied) page are released: their contents are exactly the file's, so dropping and re-reading them
//! changes nothing but residency. (A debugger's software breakpoint makes a private copy; such
//! a mapping is left alone.)

/// Unmap this process's read-only file-backed pages (code and constants) so that only what
/// runs from now on is resident. Returns how many mappings were released; an error is harmless (the process only
/// keeps more pages resident) and is for the caller to log.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // the crate's only unsafe: one madvise call, see the SAFETY note
pub fn release_startup_text() -> std::io::Result<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for (start, end) in pristine_executable_mappings(&smaps) {
        // SAFETY: the range is one whole mapping of this process (from /proc/self/smaps) that
        // is private, read-only and backed by a file with no privately copied page, so
        // MADV_DONTNEED only drops page-table entries; the next access re-reads the same bytes
        // from the page cache. No Rust object lives in it.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        released += 1;
    }
    Ok(released)
}

#[cfg(not(target_os = "linux"))]
pub fn release_startup_text() -> std::io::Result<usize> {
    Ok(0)
}

/// Address ranges of the read-only private mappings (`r-xp` code, `r--p` constants) backed by
/// a file (not `[vdso]`, not anonymous memory) whose `Anonymous:` size is zero, from the text
/// of `/proc/<pid>/smaps`. Relocated constants (RELRO) were written at load time, so their
/// mapping holds private pages and is skipped.
fn pristine_executable_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Anonymous:") {
            let pristine = kb.trim().strip_suffix("kB").map(str::trim) == Some("0");
            if let (Some(range), true) = (current.take(), pristine) {
                found.push(range);
            }
        } else if let Some(range) = mapping_header(line) {
            current = range;
        }
    }
    found
}

/// For a mapping's header line, `Some(Some(range))` when it is a read-only file mapping,
/// `Some(None)` for any other mapping; `None` for the per-mapping detail lines.
fn mapping_header(line: &str) -> Option<Option<(usize, usize)>> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    let path = fields.nth(3).unwrap_or("");
    // Private and never writable: nothing can make a private copy between reading smaps and
    // the madvise (a writable mapping could be written by another thread in between).
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
55b9a2ba5000-55b9a2bd2000 r--p 0076f000 fe:00 5326413  /usr/bin/tracseq-proxy
Anonymous:           180 kB
55b9a25dd000-55b9a2ba5000 r-xp 001a8000 fe:00 5326413  /usr/bin/tracseq-proxy
Rss:                5152 kB
Anonymous:             0 kB
55b9a2bd2000-55b9a2bd7000 rw-p 0079b000 fe:00 5326413  /usr/bin/tracseq-proxy
Anonymous:            20 kB
55b9cd9c9000-55b9cdbb3000 rw-p 00000000 00:00 0        [heap]
Anonymous:          1936 kB
7f974a30c000-7f974a462000 r-xp 00026000 fe:00 1234     /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f974a500000-7f974a510000 r-xp 00000000 fe:00 99       /usr/lib/debugged.so
Anonymous:             4 kB
7f0000000000-7f0000001000 r-xp 00000000 00:00 0
Anonymous:             0 kB
7fff1b5f4000-7fff1b5f6000 r-xp 00000000 00:00 0        [vdso]
Anonymous:             0 kB
";
        assert_eq!(
            pristine_executable_mappings(smaps),
            vec![
                (0x55b9a2434000, 0x55b9a25dd000),
                (0x55b9a25dd000, 0x55b9a2ba5000),
                (0x7f974a30c000, 0x7f974a462000)
            ]
        );
    }

    /// Resident kB of this process's pristine read-only file mappings.
    fn resident_kb() -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let ranges = pristine_executable_mappings(&smaps);
        let (mut total, mut counting) = (0, false);
        for line in smaps.lines() {
            if let Some(Some(range)) = mapping_header(line) {
                counting = ranges.contains(&range);
            } else if mapping_header(line).is_some() {
                counting = false;
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
        // The test binary has at least its own text and libc's. Afterwards only the code that
        // runs again is resident, and it keeps running: the pages fault back in from the page
        // cache.
        let before = resident_kb();
        let released = release_startup_text().expect("madvise on our own text");
        let after = resident_kb();
        assert!(released >= 2, "released {released} mappings");
        // Other tests of this binary run in parallel and fault code back in meanwhile; a
        // release that did nothing would leave `after` at `before`.
        assert!(
            after * 4 < before * 3,
            "resident read-only file pages: {before} kB before, {after} kB after"
        );
        let again = release_startup_text().expect("a second time");
        assert_eq!(again, released);
    }
}
