//! The relay process's own protection of the secrets it holds in memory: no core dumps and no
//! ptrace attach by other users (`harden`), and secret environment variables taken out of the
//! environment, including the bytes the kernel shows in `/proc/PID/environ` (`take_secret_env`).
//!
//! Both run at the very start of `tonewall run`, before any other thread exists: changing the
//! environment is not thread-safe. Values taken are kept here until the library reads them
//! once (`secret_env`); in-process users that never took them (tests, the demo) read the
//! environment as before.
//!
//! Never prints, logs or returns a value in an error.

use std::sync::Mutex;

use zeroize::Zeroizing;

/// Secret values taken out of the environment, by variable name, until read once.
static TAKEN: Mutex<Vec<(String, Zeroizing<String>)>> = Mutex::new(Vec::new());

/// Makes the process non-dumpable (`PR_SET_DUMPABLE 0`: no core file, and only root may ptrace
/// it or read its `/proc/PID/mem`, `environ`, `fd`) and sets the core size limit to 0 (hard and
/// soft, so nothing later in the process can raise it). The vault's master key, PINs and
/// decrypted cards live in this process's memory: a core file or a debugger would read them.
pub fn harden() -> std::io::Result<()> {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct passed by reference and touches no Rust memory.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_DUMPABLE takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

unsafe extern "C" {
    static mut environ: *mut *mut libc::c_char;
}

/// Takes each named variable out of the environment and keeps its value for [`secret_env`].
/// The `NAME=value` string is overwritten where it lies, because unsetting a variable only
/// drops the pointer to it: the original block at the top of the stack, which the kernel shows
/// as `/proc/PID/environ`, would still hold the value. Returns how many were found.
///
/// # Safety
/// No other thread may exist, or at least none that reads or writes the environment (the same
/// rule as `std::env::remove_var`). Call it first thing in `main`.
pub unsafe fn take_secret_env(names: &[&str]) -> usize {
    let mut found = 0;
    for &name in names {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            continue;
        }
        // SAFETY: single-threaded by this function's contract.
        let entries = unsafe { entries_named(name) };
        if entries.is_empty() {
            continue;
        }
        found += 1;
        let mut value = None;
        for &p in &entries {
            // SAFETY: `p` points at a NUL-terminated `NAME=value` string in the environment.
            let s = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
            let v = s.get(name.len() + 1..).unwrap_or_default();
            // getenv returns the first match; so does this.
            if value.is_none() {
                let bytes = Zeroizing::new(v.to_vec());
                value = Some(
                    std::str::from_utf8(&bytes)
                        .ok()
                        .map(|t| Zeroizing::new(t.to_string())),
                );
            }
            // The value is wiped while the string still says `NAME=`, so unsetenv finds it.
            // SAFETY: the bytes after `NAME=` up to the NUL belong to this string.
            unsafe { wipe(p.add(name.len() + 1), v.len()) };
        }
        // SAFETY: single-threaded by this function's contract.
        unsafe { std::env::remove_var(name) };
        // glibc's unsetenv never frees the strings (getenv pointers must stay valid), so the
        // name can go too; other C libraries may free what setenv allocated.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        for &p in &entries {
            // SAFETY: glibc keeps the string allocated after unsetenv; its name is still there.
            unsafe { wipe(p, name.len() + 1) };
        }
        if let Some(Some(v)) = value
            && let Ok(mut taken) = TAKEN.lock()
        {
            taken.retain(|(n, _)| n != name);
            taken.push((name.to_string(), v));
        }
    }
    found
}

/// Pointers to every `NAME=...` string in `environ` (a name may appear more than once).
///
/// # Safety
/// No thread may change the environment meanwhile.
unsafe fn entries_named(name: &str) -> Vec<*mut libc::c_char> {
    let mut out = Vec::new();
    // SAFETY: `environ` is the C library's NULL-terminated array of NUL-terminated strings.
    unsafe {
        let mut p = environ;
        if p.is_null() {
            return out;
        }
        while !(*p).is_null() {
            let s = std::ffi::CStr::from_ptr(*p).to_bytes();
            if s.len() > name.len()
                && s.starts_with(name.as_bytes())
                && s.get(name.len()) == Some(&b'=')
            {
                out.push(*p);
            }
            p = p.add(1);
        }
    }
    out
}

/// Overwrites `len` bytes at `p` with NULs in a way the optimiser keeps.
///
/// # Safety
/// `p..p+len` must be writable memory owned by the environment.
unsafe fn wipe(p: *mut libc::c_char, len: usize) {
    for i in 0..len {
        // SAFETY: in bounds by the caller's contract.
        unsafe { std::ptr::write_volatile(p.add(i), 0) };
    }
}

/// A secret variable's value: the one taken from the environment at start if there was one
/// (handed out once), else the environment's current value. `None` when unset or not UTF-8.
pub fn secret_env(name: &str) -> Option<Zeroizing<String>> {
    if let Ok(mut taken) = TAKEN.lock()
        && let Some(i) = taken.iter().position(|(n, _)| n == name)
    {
        return Some(taken.swap_remove(i).1);
    }
    std::env::var(name).ok().map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_variables_read_as_none() {
        assert!(secret_env("TONEWALL_TEST_SURELY_UNSET_7f3a").is_none());
    }
}
