//! The one place with `unsafe`: making a child process die with the process that started it.

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
