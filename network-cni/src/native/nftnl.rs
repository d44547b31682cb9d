//! Adding and removing nftables map elements over netlink (`NETLINK_NETFILTER`),
//! without running `nft`: one batch per attach or detach, a fraction of a millisecond
//! instead of a process start. Only set elements are written here; the table itself is
//! created once with `nft -f` (see [`super::firewall`]).
//!
//! Messages follow `linux/netfilter/nf_tables.h`: a batch (BATCH_BEGIN, NEWSETELEM or
//! DELSETELEM per element, BATCH_END) that the kernel applies all or nothing.

use std::net::IpAddr;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

/// One map element: which map, the key and the value, each a concatenation whose
/// parts are padded to 4 bytes (nftables' register size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Element {
    pub map: &'static str,
    pub key: Vec<u8>,
    pub data: Vec<u8>,
    /// The element in `nft` syntax, for messages and tests.
    pub text: String,
    /// The host port it publishes (`[host ip:]port/protocol`), for messages.
    pub label: String,
}

/// A concatenation part: the bytes, padded to a multiple of 4.
pub(super) fn part(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.resize(bytes.len().div_ceil(4) * 4, 0);
    v
}

pub(super) fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// IP protocol numbers of the protocols a host port may use.
pub(super) fn proto_number(protocol: &str) -> Option<u8> {
    match protocol {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        _ => None,
    }
}

/// Why a batch failed: the errno of the first failing message.
#[derive(Debug)]
pub(super) struct BatchError {
    pub errno: i32,
    pub element: Option<String>,
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let desc = nix::errno::Errno::from_raw(self.errno).desc();
        match &self.element {
            Some(e) => write!(f, "{desc} (element {e})"),
            None => write!(f, "{desc}"),
        }
    }
}

struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        buf.push(family); // nfgenmsg
        buf.push(0); // version NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Msg { buf }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(self.buf.len().div_ceil(4) * 4, 0);
    }

    fn nest(&mut self, kind: u16, fill: impl FnOnce(&mut Msg)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        fill(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Adds (`add = true`, failing with EEXIST if a key is taken) or deletes elements of
/// maps in table `inet <table>`, all in one transaction.
pub(super) fn apply(table: &str, elements: &[Element], add: bool) -> Result<(), BatchError> {
    if elements.is_empty() {
        return Ok(());
    }
    let io = |e: std::io::Error| BatchError {
        errno: e.raw_os_error().unwrap_or(nix::libc::EIO),
        element: None,
    };
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io)?;
    socket.bind_auto().map_err(io)?;
    let timeout = nix::sys::time::TimeVal::from(nix::libc::timeval {
        tv_sec: Duration::from_secs(5).as_secs() as _,
        tv_usec: 0,
    });
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
        .map_err(|e| BatchError {
            errno: e as i32,
            element: None,
        })?;

    let mut batch = Msg::new(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        0,
        0,
        NFNL_SUBSYS_NFTABLES,
    )
    .finish();
    let (kind, flags) = if add {
        (
            NFT_MSG_NEWSETELEM,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
    } else {
        (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
    };
    for (i, el) in elements.iter().enumerate() {
        let mut m = Msg::new(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            flags,
            i as u32 + 1,
            NFPROTO_INET,
            0,
        );
        m.attr(NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
        m.attr(NFTA_SET_ELEM_LIST_SET, &cstr(el.map));
        m.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |m| {
            m.nest(NFTA_LIST_ELEM, |m| {
                m.nest(NFTA_SET_ELEM_KEY, |m| m.attr(NFTA_DATA_VALUE, &el.key));
                if add {
                    m.nest(NFTA_SET_ELEM_DATA, |m| m.attr(NFTA_DATA_VALUE, &el.data));
                }
            });
        });
        batch.extend(m.finish());
    }
    let end_seq = elements.len() as u32 + 1;
    batch.extend(
        Msg::new(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        )
        .finish(),
    );
    socket.send(&batch, 0).map_err(io)?;

    // One NLMSG_ERROR (0 = ack) per element message, on commit and on abort alike.
    let mut answered = 0;
    let mut first_error: Option<BatchError> = None;
    while answered < elements.len() {
        let (reply, _) = socket.recv_from_full().map_err(io)?;
        let mut off = 0;
        while off + 16 <= reply.len() {
            let len = u32::from_ne_bytes(reply[off..off + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(reply[off + 4..off + 6].try_into().expect("2 bytes"));
            if len < 16 || off + len > reply.len() {
                break;
            }
            if kind == NLMSG_ERROR && len >= 20 {
                let code =
                    i32::from_ne_bytes(reply[off + 16..off + 20].try_into().expect("4 bytes"));
                // The echoed request header follows: its sequence number names the element.
                let seq = reply
                    .get(off + 28..off + 32)
                    .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .unwrap_or(0);
                answered += 1;
                if code != 0 && first_error.is_none() {
                    first_error = Some(BatchError {
                        errno: -code,
                        element: elements
                            .get((seq as usize).wrapping_sub(1))
                            .map(|e| e.label.clone()),
                    });
                }
            }
            off += len.div_ceil(4) * 4;
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_parts_and_encodes_nested_attributes() {
        assert_eq!(part(&[6]), vec![6, 0, 0, 0]);
        assert_eq!(part(&8080u16.to_be_bytes()), vec![0x1f, 0x90, 0, 0]);
        assert_eq!(part(&[1, 2, 3, 4]), vec![1, 2, 3, 4]);
        let mut m = Msg::new(0x0a0c, 1, 7, NFPROTO_INET, 0);
        m.nest(3, |m| m.attr(1, &[1, 2, 3]));
        let buf = m.finish();
        assert_eq!(
            u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize,
            buf.len()
        );
        // nest header (len 12, type 3|NESTED), inner attr (len 7, type 1), padded.
        assert_eq!(&buf[20..24], &[12, 0, 3, 0x80]);
        assert_eq!(&buf[24..32], &[7, 0, 1, 0, 1, 2, 3, 0]);
    }
}
