//! Helpers for the root tests: unique names, cleanup guards that run even when a test
//! panics, and running commands inside a pinned namespace.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use wharf_network_cni::netns::NetNs;

/// Whether the test can do root things; root tests skip (loudly) otherwise.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A short tag unique to this test process and call site, for names of links,
/// namespaces and networks (interface names are at most 15 bytes).
pub fn tag(n: u32) -> String {
    format!("{:x}{n}", std::process::id() % 0xfffff)
}

/// Runs a command and returns its output; panics with stderr on spawn failure.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"))
}

/// Runs `cmd` inside the namespace pinned at `ns`.
pub fn in_ns(ns: &Path, cmd: &str, args: &[&str]) -> Output {
    let mut full = vec![format!("--net={}", ns.display()), cmd.to_string()];
    full.extend(args.iter().map(|s| s.to_string()));
    Command::new("nsenter")
        .args(&full)
        .output()
        .expect("nsenter")
}

/// Whether `ns` can ping `ip` once.
pub fn ping(ns: &Path, ip: &str) -> bool {
    in_ns(ns, "ping", &["-c1", "-W2", ip]).status.success()
}

/// A TCP or UDP server in a namespace that answers `reply` to every client, until
/// dropped (killed by pid).
pub struct Listener {
    child: Child,
}

impl Listener {
    /// Starts it on `port` in `ns`; waits until it listens.
    pub fn start(ns: &Path, port: u16, udp: bool, reply: &str) -> Listener {
        let script = format!(
            r#"
import socket, sys
udp = {udp}
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", {port}))
if not udp: s.listen(16)
print("ready", flush=True)
while True:
    if udp:
        data, peer = s.recvfrom(100); s.sendto(b"{reply}", peer)
    else:
        c, _ = s.accept(); c.sendall(b"{reply}"); c.close()
"#,
            udp = if udp { "True" } else { "False" },
        );
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["python3", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start listener");
        let mut out = child.stdout.take().unwrap();
        let mut buf = [0u8; 6];
        use std::io::Read;
        out.read_exact(&mut buf).expect("listener ready");
        Listener { child }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects (from `ns`, or the host when `None`) to `ip:port` and returns what the
/// server said, or an empty string.
pub fn fetch(ns: Option<&Path>, ip: &str, port: u16, udp: bool) -> String {
    let script = format!(
        r#"
import socket
udp = {udp}
fam = socket.AF_INET6 if ":" in "{ip}" else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
s.settimeout(3)
try:
    if udp:
        s.sendto(b"hi", ("{ip}", {port})); print(s.recvfrom(100)[0].decode(), end="")
    else:
        s.connect(("{ip}", {port})); print(s.recv(100).decode(), end="")
except Exception as e:
    pass
"#,
        udp = if udp { "True" } else { "False" },
    );
    let out = match ns {
        Some(ns) => in_ns(ns, "python3", &["-c", &script]),
        None => run("python3", &["-c", &script]),
    };
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Retries `f` for up to `timeout` (rules and addresses take a moment: DAD, ARP).
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Deletes what a test created when dropped: namespaces, links, and iptables rules
/// and chains that appeared while it ran (found by diffing `iptables-save`).
pub struct Cleanup {
    pub namespaces: Vec<NetNs>,
    pub links: Vec<String>,
    pub dirs: Vec<PathBuf>,
    iptables_before: Vec<(String, String)>,
    pub nft_tables: Vec<String>,
    /// Strings (network names, container ids) that mark iptables rules as this test's.
    pub markers: Vec<String>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// Root tests of one binary run one at a time: they share iptables' chains, and
/// each one's cleanup must not take another's rules for its own.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Cleanup {
    /// Waits for other root tests of this binary, then snapshots the iptables rules.
    pub fn new() -> Cleanup {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        Cleanup {
            _serial: serial,
            namespaces: Vec::new(),
            links: Vec::new(),
            dirs: Vec::new(),
            iptables_before: iptables_lines(),
            nft_tables: Vec::new(),
            markers: Vec::new(),
        }
    }
}

fn now_has(tool: &str, prefix: &str) -> bool {
    iptables_lines()
        .iter()
        .any(|(t, l)| t == tool && l.starts_with(prefix))
}

fn iptables_lines() -> Vec<(String, String)> {
    let mut lines = Vec::new();
    for (cmd, table) in [
        ("iptables-save", "nat"),
        ("iptables-save", "filter"),
        ("iptables-save", "mangle"),
        ("ip6tables-save", "nat"),
        ("ip6tables-save", "filter"),
        ("ip6tables-save", "mangle"),
    ] {
        let out = run(cmd, &["-t", table]);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.starts_with("-A ") || line.starts_with(':') {
                let tool = cmd.trim_end_matches("-save");
                lines.push((format!("{tool} -w -t {table}"), line.to_string()));
            }
        }
    }
    lines
}

impl Cleanup {
    /// Removes the iptables rules that carry one of our markers, then chains that
    /// appeared during the test and are left empty or unreferenced. Tests run
    /// concurrently, so rules of other tests (no marker of ours) are left alone.
    fn remove_iptables_leftovers(&self) {
        let no_hostports = |tool: &str| !now_has(tool, "-A CNI-HOSTPORT-DNAT ");
        let sh = |cmd: String| {
            let _ = Command::new("sh").args(["-c", &cmd]).output();
        };
        // Chains our marked rules jumped to: ours to flush once nothing refers to them.
        let mut ours = std::collections::HashSet::new();
        for _ in 0..4 {
            let now = iptables_lines();
            let new: Vec<_> = now
                .iter()
                .filter(|l| !self.iptables_before.contains(l))
                .collect();
            let mut changed = false;
            for (tool, line) in new.iter().filter(|(_, l)| l.starts_with("-A ")) {
                if self.markers.iter().any(|m| line.contains(m.as_str())) {
                    if let Some(target) =
                        line.rsplit(" -j ").next().filter(|_| line.contains(" -j "))
                    {
                        ours.insert(target.split(' ').next().unwrap_or_default().to_string());
                    }
                    sh(format!("{tool} -D {}", &line[3..]));
                    changed = true;
                }
            }
            for (tool, line) in new.iter().filter(|(_, l)| l.starts_with(':')) {
                let chain = line[1..].split(' ').next().unwrap_or_default();
                let rules_in = |t: &str| {
                    now.iter()
                        .filter(|(tt, l)| tt == t && l.starts_with(&format!("-A {chain} ")))
                        .count()
                };
                let jumps: Vec<_> = now
                    .iter()
                    .filter(|(tt, l)| {
                        tt == tool && l.starts_with("-A ") && l.ends_with(&format!("-j {chain}"))
                    })
                    .collect();
                if rules_in(tool) == 0 {
                    for (t, l) in &jumps {
                        sh(format!("{t} -D {}", &l[3..]));
                    }
                    sh(format!("{tool} -X {chain}"));
                    changed = true;
                } else if jumps.is_empty() && ours.contains(chain) {
                    sh(format!("{tool} -F {chain}; {tool} -X {chain}"));
                    changed = true;
                } else if chain.starts_with("CNI-HOSTPORT-") && no_hostports(tool) {
                    // portmap's shared chains, made during this test and serving no
                    // mapping any more (portmap never removes them).
                    for (t, l) in &jumps {
                        sh(format!("{t} -D {}", &l[3..]));
                    }
                    sh(format!("{tool} -F {chain}; {tool} -X {chain}"));
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ns.delete();
        }
        for link in &self.links {
            let _ = run("ip", &["link", "del", link]);
        }
        for table in &self.nft_tables {
            let _ = run("nft", &["delete", "table", "inet", table]);
            let _ = run("nft", &["delete", "table", "ip", table]);
            let _ = run("nft", &["delete", "table", "ip6", table]);
        }
        self.remove_iptables_leftovers();
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
