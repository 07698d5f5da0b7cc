//! The one place with `unsafe`: making a child process die with the process that started it,
//! and keeping the node's resident memory small (malloc arenas, start-up code pages).

/// Makes the child of `cmd` receive SIGKILL when the thread that spawned it exits (Linux
/// `PR_SET_PDEATHSIG`), so a `claim run` that is itself killed never leaves its command
/// running without the claim.
#[allow(unsafe_code)]
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let parent = std::process::id();
        // SAFETY: the closure runs in the child between fork and exec. It only calls
        // prctl(2) and getppid(2), both async-signal-safe, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGKILL)).map_err(std::io::Error::from)?;
                // The parent may have died before prctl: then nobody will signal us.
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(std::io::Error::other("the parent exited before the child started"));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = cmd;
}

/// Restores the default action of SIGPIPE (Rust ignores it): a command that only prints,
/// piped into `head`, then ends quietly when the reader goes instead of panicking in
/// `println!`. Not for the node or commands that manage children (`up`, `claim run`,
/// `mcp-proxy`): they handle a closed pipe or socket as an error.
#[allow(unsafe_code)]
pub fn default_sigpipe() {
    // SAFETY: installs the default disposition; no handler code runs in this process.
    let _ = unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) };
}

/// Makes glibc's malloc use one arena for every thread (`M_ARENA_MAX` = 1) instead of one
/// per thread that allocates. Call before any thread starts. A no-op elsewhere.
#[allow(unsafe_code)]
pub fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt(3) only changes a malloc tunable; called before other threads exist.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

/// Keeps the resident set to the code that runs. After start-up, for the executable's own
/// code (its `r-xp` mapping): drops this process's mappings of those pages (start-up code:
/// arguments, configuration, TLS set-up, stops counting), tells the kernel not to read
/// around a code fault (`MADV_RANDOM`), and drops the cached file pages that no process maps
/// any more (`POSIX_FADV_DONTNEED`), so a later fault maps the page it needs instead of the
/// 64 KiB around it. The pages are clean copies of the file: anything needed again is read
/// back. Writable mappings are never touched. Returns the bytes of code advised.
#[allow(unsafe_code)]
pub fn trim_code_pages() -> usize {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::mman::{MmapAdvise, madvise};
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return 0 };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return 0 };
        let exe_path = exe.to_string_lossy().into_owned();
        let mut done = 0;
        let mut file_ranges = Vec::new();
        for line in maps.lines() {
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms), Some(offset)) = (f.next(), f.next(), f.next()) else { continue };
            let path = f.nth(2).unwrap_or("");
            // Only the executable's own code: read + execute, private, never writable.
            if perms != "r-xp" || path != exe_path {
                continue;
            }
            let Some((a, b)) = range.split_once('-') else { continue };
            let (Ok(a), Ok(b), Ok(off)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16), i64::from_str_radix(offset, 16)) else { continue };
            let Some(len) = b.checked_sub(a).filter(|l| *l > 0) else { continue };
            let Some(ptr) = std::ptr::NonNull::new(a as *mut std::ffi::c_void) else { continue };
            // SAFETY: the range is a whole mapping of this process, read from
            // /proc/self/maps: the executable's read-only, executable, private mapping of its
            // file. Its pages were never written (it is not writable), so MADV_DONTNEED only
            // drops their mappings and later accesses read the same bytes back from the file;
            // MADV_RANDOM only changes read-ahead. No memory Rust owns is affected.
            if unsafe { madvise(ptr, len, MmapAdvise::MADV_DONTNEED) }.is_ok() {
                done += len;
            }
            let _ = unsafe { madvise(ptr, len, MmapAdvise::MADV_RANDOM) };
            file_ranges.push((off, len as i64));
        }
        if let Ok(file) = std::fs::File::open(&exe) {
            for (off, len) in file_ranges {
                let _ = nix::fcntl::posix_fadvise(&file, off, len, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
            }
        }
        done
    }
    #[cfg(not(target_os = "linux"))]
    0
}
