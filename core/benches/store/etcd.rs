//! etcd as a reference peer: a private single-member etcd on loopback, driven through its
//! JSON gateway over one keep-alive HTTP/1.1 connection (what an etcd-backed store pays per
//! call at least: serialize, one round trip, decode).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use k8s_openapi::api::core::v1::Pod;
use wharf_core::store::memory::MemoryStore;
use wharf_core::store::Store;
use wharf_core::{Kind, Object};

/// Keys written to etcd (and to the memory store it is compared with).
const KEYS: usize = 1_000;

/// A private etcd process; stopped and its data removed on drop.
struct Etcd {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Etcd {
    fn start() -> Option<Etcd> {
        let (port, peer) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("wharf-bench-etcd-{}", std::process::id()));
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.join("data"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{port}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=bench=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let etcd = Etcd { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(mut c) = Client::connect(etcd.port) {
                if c.call("/v3/kv/range", r#"{"key":"AA=="}"#).is_ok() {
                    return Some(etcd);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("etcd did not come up on 127.0.0.1:{port}; skipping the peer comparison");
        None
    }
}

/// A minimal HTTP/1.1 client for etcd's JSON gateway.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(port: u16) -> std::io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn call(&mut self, path: &str, body: &str) -> std::io::Result<Vec<u8>> {
        write!(
            self.writer,
            "POST {path} HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let ok = line.split(' ').nth(1) == Some("200");
        let (mut length, mut chunked) = (0usize, false);
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(v) = header.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            chunked |= header == "transfer-encoding: chunked";
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length, 0);
            self.reader.read_exact(&mut body)?;
        }
        if ok {
            Ok(body)
        } else {
            Err(std::io::Error::other(
                String::from_utf8_lossy(&body).into_owned(),
            ))
        }
    }

    fn put(&mut self, key: &str, value: &[u8]) {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(key.as_bytes()),
            b64(value)
        );
        self.call("/v3/kv/put", &body).expect("etcd put");
    }

    fn get(&mut self, key: &str) -> Vec<u8> {
        let body = format!(r#"{{"key":"{}"}}"#, b64(key.as_bytes()));
        let response = self.call("/v3/kv/range", &body).expect("etcd range");
        let json: serde_json::Value = serde_json::from_slice(&response).expect("range JSON");
        let value = json["kvs"][0]["value"].as_str().expect("key present");
        unb64(value)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().take_while(|c| *c != b'=') {
        let v = B64.iter().position(|b| *b == c).expect("base64 digit") as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn key(i: usize) -> String {
    format!("/registry/pods/ns-{}/web-{i}", i % 100)
}

/// Median nanoseconds per call of `op` over `rounds` rounds of `n` calls.
fn per_call(rounds: usize, n: usize, mut op: impl FnMut(usize)) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|r| {
            let start = Instant::now();
            for i in 0..n {
                op(r * n + i);
            }
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[rounds / 2]
}

/// etcd put/get benchmarks and paired memory-store/etcd ratios, when etcd is installed.
pub fn compare(c: &mut Criterion, sample_pod: fn(usize) -> Pod) {
    let Some(etcd) = Etcd::start() else {
        eprintln!("etcd not available: no peer comparison");
        return;
    };
    let mut client = Client::connect(etcd.port).expect("connect to etcd");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = MemoryStore::new();
    for i in 0..KEYS {
        let pod = sample_pod(i);
        client.put(&key(i), &serde_json::to_vec(&pod).unwrap());
        rt.block_on(store.create(pod.into())).unwrap();
    }
    let etcd_put = |client: &mut Client, i: usize| {
        let mut pod = sample_pod(i % KEYS);
        pod.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("rev".into(), i.to_string());
        client.put(&key(i % KEYS), &serde_json::to_vec(&pod).unwrap());
    };
    let etcd_get = |client: &mut Client, i: usize| {
        let bytes = client.get(&key(i % KEYS));
        serde_json::from_slice::<Pod>(&bytes).expect("pod JSON")
    };
    let memory_update = |i: usize| {
        let mut pod = sample_pod(i % KEYS);
        pod.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("rev".into(), i.to_string());
        rt.block_on(store.update(pod.into())).unwrap();
    };
    let memory_get = |i: usize| {
        let ns = format!("ns-{}", i % KEYS % 100);
        rt.block_on(store.get(&Kind::Pod, Some(&ns), &format!("web-{}", i % KEYS)))
            .unwrap()
    };

    let mut group = c.benchmark_group("etcd_peer");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("put_pod_json", |b| {
        b.iter(|| {
            i += 1;
            etcd_put(&mut client, i)
        })
    });
    group.bench_function("get_pod_json", |b| {
        b.iter(|| {
            i += 1;
            etcd_get(&mut client, i)
        })
    });
    group.finish();

    let etcd_w = per_call(5, 200, |i| etcd_put(&mut client, i));
    let mem_w = per_call(5, 200, memory_update);
    let etcd_r = per_call(5, 200, |i| {
        etcd_get(&mut client, i);
    });
    let mem_r = per_call(5, 200, |i| {
        let o: std::sync::Arc<Object> = memory_get(i);
        drop(o);
    });
    println!(
        "peer ratio (etcd / memory store, median per call, {KEYS} keys): \
         write {:.1} us / {:.2} us = {:.0}x; read {:.1} us / {:.2} us = {:.0}x",
        etcd_w / 1e3,
        mem_w / 1e3,
        etcd_w / mem_w,
        etcd_r / 1e3,
        mem_r / 1e3,
        etcd_r / mem_r
    );
    drop(etcd);
}
