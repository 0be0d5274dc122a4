//! What another local user (or a crash) can read of a running relay: `tonewall run` is started
//! as a separate process with its master key and API tokens in the environment, as an operator
//! would start it, and its `/proc` entries are read from outside.
//!
//! - The secret variables are gone from `/proc/PID/environ` (name and value), yet the relay
//!   took them: it answers a request with the configured token and refuses a wrong one.
//! - The process is not dumpable: its `/proc/PID` files belong to root, so a process of the
//!   relay's own uid cannot read its memory, environment or descriptors, nor ptrace it.
//! - Its core file size limit is 0.
//!
//! When the tests run as root, the relay runs as `nobody` (the ownership of `/proc/PID` files
//! only shows dumpability for a non-root process).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Kills the relay however the test ends.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request on a fresh connection; the status code.
fn status_of(port: u16, path: &str, token: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("an HTTP answer");
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

#[test]
fn run_drops_its_secret_env_and_cannot_be_dumped() {
    let root = unsafe { libc::geteuid() } == 0;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (sip, api) = (free_port(), free_port());
    let media = 47_000 + (std::process::id() % 400) as u16 * 4;
    let config = dir.path().join("tonewall.toml");
    std::fs::write(
        &config,
        format!(
            "[sip]\nlisten = \"127.0.0.1:{sip}\"\ntransports = [\"udp\"]\n\
             [media]\nport_min = {media}\nport_max = {}\n\
             [api]\nlisten = \"127.0.0.1:{api}\"\n\
             tokens_env = \"TW_SECRETS_TEST_TOKENS\"\n\
             [vault]\nmaster_key_env = \"TW_SECRETS_TEST_KEY\"\n\
             [log]\nlevel = \"warn\"\n",
            media + 3
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut raw = [0u8; 48];
    rand::fill(&mut raw);
    let key = hex_of(&raw[..32]);
    let token = format!("tok{}", hex_of(&raw[32..]));
    let tokens = format!("ops:{token}:admin");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tonewall"));
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("TW_SECRETS_TEST_KEY", &key)
        .env("TW_SECRETS_TEST_TOKENS", &tokens)
        .env("TW_SECRETS_TEST_PLAIN", "stays")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if root {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let mut relay = Relay(cmd.spawn().expect("spawn tonewall run"));
    let pid = relay.0.id();

    // Listening on the API means it has read its key and tokens.
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", api)).is_err() {
        if let Ok(Some(st)) = relay.0.try_wait() {
            panic!("tonewall run exited before listening: {st}");
        }
        assert!(Instant::now() < deadline, "tonewall run did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    // It took the tokens: the right one passes the bearer check, a wrong one does not.
    let probe = "/v1/sessions/00112233445566778899aabbccddeeff";
    assert_eq!(status_of(api, probe, "wrong-token-0123456789abcdef"), 401);
    // (`name:token:role` triples; a relay that reads `name:token` pairs takes `token:role` as
    // the token.)
    let with_role = format!("{token}:admin");
    assert!(
        status_of(api, probe, &token) != 401 || status_of(api, probe, &with_role) != 401,
        "the configured token is refused"
    );

    let proc_dir = format!("/proc/{pid}");
    let limits = std::fs::read_to_string(format!("{proc_dir}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core limit line");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");

    // Not dumpable: the kernel gives the process's /proc files to root.
    let status = std::fs::read_to_string(format!("{proc_dir}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uid: u32 = uid_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_ne!(uid, 0, "the relay must run as a non-root user here");
    let owner = std::fs::metadata(format!("{proc_dir}/environ"))
        .unwrap()
        .uid();
    assert_eq!(
        owner, 0,
        "/proc/{pid}/environ owned by uid {owner}: the process is dumpable"
    );

    match std::fs::read(format!("{proc_dir}/environ")) {
        Ok(environ) => {
            let text = String::from_utf8_lossy(&environ);
            assert!(text.contains("TW_SECRETS_TEST_PLAIN=stays"), "environ read");
            for secret in [
                key.as_str(),
                token.as_str(),
                "TW_SECRETS_TEST_KEY",
                "TW_SECRETS_TEST_TOKENS",
            ] {
                assert!(
                    !text.contains(secret),
                    "/proc/{pid}/environ still shows a secret"
                );
            }
        }
        // Not root: the process is the test's uid yet not readable, which says as much.
        Err(e) => assert!(!root, "root cannot read /proc/{pid}/environ: {e}"),
    }
}
