//! libpcap capture files of RTP over UDP/IPv4 on Ethernet, as sipp's `play_pcap_audio` replays
//! them: sipp takes each UDP datagram of the capture, rewrites its ports to the call's media
//! ports (keeping each packet's offset from the lowest destination port in the file) and sends
//! it after the gap between capture timestamps. Ethernet (linktype 1) is one of the two link
//! types it reads; addresses and ports written here are placeholders sipp replaces.
//!
//! Also the caller audio the sipp tests send: speech with a card keyed over it, packetized as a
//! PSTN trunk would (in-band G.711 tones, or RFC 4733 events) by `rtp::trunk::packetize`.

use std::io;
use std::path::Path;

use tonewall::dsp::g711::Codec;
use tonewall::rtp::trunk::{KeySpan, TrunkConfig, packetize};

use super::{ToneParams, card_keys, fixture, mix_under, to_i16, tones};

/// libpcap file format (https://wiki.wireshark.org/Development/LibpcapFileFormat): microsecond
/// timestamps, version 2.4, written little-endian (readers detect the byte order by the magic).
const MAGIC: u32 = 0xa1b2_c3d4;
const LINKTYPE_ETHERNET: u32 = 1;
const SNAPLEN: u32 = 65_535;
const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;

/// Placeholder endpoints written into every packet; sipp replaces ports (and sends from its own
/// media address), so only their sameness matters: one destination port means one stream.
const SRC: [u8; 4] = [192, 0, 2, 1];
const DST: [u8; 4] = [192, 0, 2, 2];
const SPORT: u16 = 16_384;
const DPORT: u16 = 16_384;

/// RFC 791 header checksum: one's complement of the one's-complement sum of 16-bit words.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One Ethernet/IPv4/UDP frame around `payload`. The UDP checksum is 0 ("none", RFC 768),
/// which sipp recomputes anyway when it rewrites the ports.
fn frame(payload: &[u8], ip_id: u16) -> Vec<u8> {
    let udp_len = UDP_LEN + payload.len();
    let ip_len = IPV4_LEN + udp_len;
    let mut f = Vec::with_capacity(ETH_LEN + ip_len);
    // Ethernet II: locally administered MACs, EtherType IPv4.
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let mut ip = [0u8; IPV4_LEN];
    ip[0] = 0x45; // version 4, 5 words
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&SRC);
    ip[16..20].copy_from_slice(&DST);
    let sum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&SPORT.to_be_bytes());
    f.extend_from_slice(&DPORT.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A capture of `packets` (RTP datagrams), one every `interval_us` microseconds from t = 0.
pub fn rtp_pcap(packets: &[Vec<u8>], interval_us: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    out.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&SNAPLEN.to_le_bytes());
    out.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    for (i, p) in packets.iter().enumerate() {
        let t = i as u64 * interval_us;
        let f = frame(p, i as u16);
        out.extend_from_slice(&((t / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((t % 1_000_000) as u32).to_le_bytes());
        // Captured whole: sipp refuses truncated packets.
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&f);
    }
    out
}

/// Writes [`rtp_pcap`] to `path`.
pub fn write_rtp_pcap(path: &Path, packets: &[Vec<u8>], interval_us: u64) -> io::Result<()> {
    std::fs::write(path, rtp_pcap(packets, interval_us))
}

/// The RTP datagrams of a capture written by [`rtp_pcap`] (or any Ethernet/IPv4/UDP capture
/// without IP options), in order: lets a test check what it asked sipp to send.
pub fn read_udp_payloads(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let incl = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        let f = &data[at + 16..at + 16 + incl];
        out.push(f[ETH_LEN + IPV4_LEN + UDP_LEN..].to_vec());
        at += 16 + incl;
    }
    out
}

/// How the caller's keys travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// DTMF tones in the G.711 audio.
    InBand,
    /// RFC 4733 telephone-events (payload type 101); the audio under the keys is not sent.
    Events,
}

/// A caller keying the whole test card over speech: the audio the phone produced (tones and
/// speech, before any packetizing), the keys' spans in it, and the RTP a trunk sends for it.
pub struct CallerMedia {
    pub audio: Vec<i16>,
    pub spans: Vec<KeySpan>,
    pub trunk: TrunkConfig,
    pub packets: Vec<Vec<u8>>,
}

/// The card keyed (60 ms tones, 60 ms pauses, −10 dBm0) after `lead_ms` of speech, with the
/// speech fixture 12 dB down under the keys and `tail_ms` of speech after them.
pub fn card_over_speech(codec: Codec, keys: Keys, lead_ms: f64, tail_ms: f64) -> CallerMedia {
    let (mut sig, spans) = tones(&card_keys(), ToneParams::default(), lead_ms, 11);
    sig.extend(std::iter::repeat_n(0.0, (tail_ms * 8.0) as usize));
    mix_under(&mut sig, &fixture("speech_en_hello.wav"), -12.0);
    let audio = to_i16(&sig);
    let trunk = TrunkConfig {
        codec,
        ..TrunkConfig::default()
    };
    let packets = packetize(
        &audio,
        &trunk,
        (keys == Keys::Events).then_some(spans.as_slice()),
    );
    CallerMedia {
        audio,
        spans,
        trunk,
        packets,
    }
}

/// One run of keys in [`keys_over_speech`]: `lead_ms` of speech, then `text` keyed (60 ms
/// tones, 60 ms pauses, −10 dBm0) and travelling as `keys` says.
#[derive(Clone, Copy, Debug)]
pub struct KeyRun<'a> {
    pub lead_ms: f64,
    pub text: &'a str,
    pub keys: Keys,
}

/// A caller keying several runs over speech (say a locator as events, later a card partly
/// in-band and partly as events), with `tail_ms` of speech after the last. As in
/// [`card_over_speech`], the speech fixture runs 12 dB down under everything; `spans` holds
/// every key of every run, in order.
pub fn keys_over_speech(codec: Codec, runs: &[KeyRun<'_>], tail_ms: f64) -> CallerMedia {
    let mut sig = Vec::new();
    let (mut spans, mut event_spans) = (Vec::new(), Vec::new());
    for (i, run) in runs.iter().enumerate() {
        let (part, part_spans) = tones(run.text, ToneParams::default(), run.lead_ms, 11 + i as u64);
        let at = sig.len() as u64;
        for s in part_spans {
            let s = KeySpan {
                start: s.start + at,
                end: s.end + at,
                ..s
            };
            spans.push(s);
            if run.keys == Keys::Events {
                event_spans.push(s);
            }
        }
        sig.extend(part);
    }
    sig.extend(std::iter::repeat_n(0.0, (tail_ms * 8.0) as usize));
    mix_under(&mut sig, &fixture("speech_en_hello.wav"), -12.0);
    let audio = to_i16(&sig);
    let trunk = TrunkConfig {
        codec,
        ..TrunkConfig::default()
    };
    let packets = packetize(&audio, &trunk, Some(event_spans.as_slice()));
    CallerMedia {
        audio,
        spans,
        trunk,
        packets,
    }
}

/// Collects the RTP datagrams reaching `sock` until two quiet seconds after the first (or
/// 30 s with none).
pub fn collect_rtp(sock: tokio::net::UdpSocket) -> tokio::task::JoinHandle<Vec<Vec<u8>>> {
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        let mut packets = Vec::new();
        loop {
            let wait = if packets.is_empty() {
                std::time::Duration::from_secs(30)
            } else {
                std::time::Duration::from_secs(2)
            };
            match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
                Ok(Ok((n, _))) if n >= 12 => packets.push(buf[..n].to_vec()),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        packets
    })
}
