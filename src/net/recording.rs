//! A call's stereo recording (left: what the agent received, right: what the caller received),
//! streamed to disk as the call goes.
//!
//! Memory per call is fixed: a ring of `WINDOW` stereo frames (64 KB) in which each channel's
//! audio is placed by RTP timestamp (so reordered packets land where they belong). When a
//! packet would write past the ring, its oldest `CHUNK` frames (16 KB) go to the disk writer,
//! one thread shared by all calls, through a bounded queue: the media thread hands a buffer
//! over and never waits for the disk. If the queue is full the chunk is dropped and that half
//! second is silence in the file (counted, reported once when the call ends). Audio arriving
//! later than the ring's span (about 2 s) is lost the same way.
//!
//! The file is created at the start of the call with `create_new` and mode 0600 (recordings
//! hold callers' voices; no other user reads them), named from the call id and the start time
//! in Unix milliseconds, so names never collide across restarts. Its WAV header is written
//! with a zero length first and rewritten with the real one when the call ends, off the media
//! thread.
//!
//! Never on the media thread: a file system call, a lock or a log line.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::dsp::g711::Codec;
use crate::rtp::packet::RtpView;
use crate::wav;

/// Stereo frames the ring holds: a power of two, about 2 s at 8 kHz.
const WINDOW: usize = 1 << 14;
/// Frames handed to the writer at a time: about 0.5 s, 16 KB.
const CHUNK: usize = 1 << 12;
/// Chunks waiting for the disk, all calls together (16 MB).
const QUEUE: usize = 1024;
const HEADER: u64 = 44;
const FRAME_BYTES: usize = 4;

/// One open recording, shared by the call's relay and the writer thread.
struct Sink {
    file: File,
    /// The first write error, reported when the call ends.
    failed: Mutex<Option<io::Error>>,
    /// Chunks the full queue turned away.
    dropped: AtomicU64,
}

impl Sink {
    fn write_at(&self, bytes: &[u8], offset: u64) {
        if let Err(e) = self.file.write_all_at(bytes, offset)
            && let Ok(mut f) = self.failed.lock()
        {
            f.get_or_insert(e);
        }
    }
}

enum Job {
    Chunk {
        to: Arc<Sink>,
        offset: u64,
        data: Box<[u8]>,
    },
    /// Answered once every chunk queued before it is written.
    Flush(SyncSender<()>),
}

/// The writer thread's queue, started with the first recording.
fn writer() -> Option<&'static SyncSender<Job>> {
    static WRITER: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();
    WRITER
        .get_or_init(|| {
            let (tx, rx) = sync_channel(QUEUE);
            std::thread::Builder::new()
                .name("tonewall-rec".into())
                .spawn(move || write_loop(rx))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

fn write_loop(rx: Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        match job {
            Job::Chunk { to, offset, data } => to.write_at(&data, offset),
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Where one channel's RTP timestamps fall on the recording's sample clock: anchored at the
/// wall-clock sample of the channel's first packet so the two channels line up.
#[derive(Default)]
struct Anchor {
    origin: Option<(u32, usize)>,
}

impl Anchor {
    /// The frame the packet's first sample goes to.
    fn place(&mut self, timestamp: u32, now_sample: usize) -> usize {
        let (ts0, at0) = *self.origin.get_or_insert((timestamp, now_sample));
        let off = timestamp.wrapping_sub(ts0);
        // A timestamp jump backwards or far ahead (new SSRC) re-anchors on the clock.
        if off < 8000 * 600 {
            at0 + off as usize
        } else {
            self.origin = Some((timestamp, now_sample));
            now_sample
        }
    }
}

/// Left or right.
#[derive(Clone, Copy)]
pub(crate) enum Channel {
    /// What the agent received.
    Agent = 0,
    /// What the caller received.
    Caller = 1,
}

pub(crate) struct Recorder {
    path: PathBuf,
    sink: Result<Arc<Sink>, String>,
    anchors: [Anchor; 2],
    ring: Box<[[i16; 2]]>,
    /// The frame at the ring's start: a multiple of `CHUNK`; everything before it is handed on.
    base: usize,
    /// One past the last frame written.
    end: usize,
    /// Frames recorded at most.
    cap: usize,
}

impl Recorder {
    /// Creates `<call>-<unix ms>.wav` in `dir` (0600, never over an existing file). A failure
    /// is kept and reported when the call ends; the call goes on unrecorded.
    pub(crate) fn create(dir: &Path, label: &str, max_s: u64) -> Recorder {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let stem = format!("{label}-{ms}");
        let (path, sink) = match open_new(dir, &stem) {
            Ok((path, file)) => {
                let sink = file
                    .write_all_at(&wav::pcm16_header(2, 0), 0)
                    .map(|()| {
                        Arc::new(Sink {
                            file,
                            failed: Mutex::new(None),
                            dropped: AtomicU64::new(0),
                        })
                    })
                    .map_err(|e| e.to_string());
                (path, sink)
            }
            Err(e) => (dir.join(format!("{stem}.wav")), Err(e.to_string())),
        };
        Recorder {
            path,
            sink,
            anchors: [Anchor::default(), Anchor::default()],
            ring: vec![[0i16; 2]; WINDOW].into_boxed_slice(),
            base: 0,
            end: 0,
            cap: (max_s as usize).saturating_mul(8000),
        }
    }

    /// Places a packet's audio (G.711 decoded) on its channel; other payloads are ignored.
    /// `now_sample`: 8 kHz samples since the relay started.
    pub(crate) fn put(&mut self, ch: Channel, pkt: &[u8], now_sample: usize) {
        if self.sink.is_err() {
            return;
        }
        let Ok(v) = RtpView::parse(pkt) else {
            return;
        };
        let Some(codec) = Codec::from_payload_type(v.payload_type()) else {
            return;
        };
        let ch = ch as usize;
        let at = self.anchors[ch].place(v.timestamp(), now_sample);
        let payload = v.payload();
        let end = at.saturating_add(payload.len()).min(self.cap);
        if end <= at {
            return;
        }
        if end > self.base + WINDOW {
            self.advance(end - WINDOW);
        }
        // Audio from before the ring's start is too late: it has gone to disk.
        let from = at.max(self.base);
        for (f, &b) in (from..end).zip(payload.get(from - at..).unwrap_or_default()) {
            if let Some(slot) = self.ring.get_mut(f % WINDOW) {
                slot[ch] = codec.decode(b);
            }
        }
        self.end = self.end.max(end);
    }

    /// Hands frames before `to` (rounded up to a chunk) to the writer.
    fn advance(&mut self, to: usize) {
        let to = to.div_ceil(CHUNK) * CHUNK;
        while self.base < to {
            if self.base >= self.end {
                // Nothing written from here on: the ring is all silence, and so is the file's
                // gap (read back as zeros).
                self.base = to;
                break;
            }
            self.hand_over();
        }
    }

    /// The ring's first chunk goes to the writer and its slots are cleared.
    fn hand_over(&mut self) {
        let start = self.base % WINDOW;
        if let Some(frames) = self.ring.get_mut(start..start + CHUNK) {
            if let Ok(sink) = &self.sink {
                let mut data = vec![0u8; CHUNK * FRAME_BYTES].into_boxed_slice();
                for (out, f) in data.chunks_exact_mut(FRAME_BYTES).zip(frames.iter()) {
                    out[..2].copy_from_slice(&f[0].to_le_bytes());
                    out[2..].copy_from_slice(&f[1].to_le_bytes());
                }
                let job = Job::Chunk {
                    to: sink.clone(),
                    offset: HEADER + (self.base * FRAME_BYTES) as u64,
                    data,
                };
                match writer().map(|w| w.try_send(job)) {
                    Some(Ok(())) => {}
                    Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => {
                        sink.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            frames.fill([0, 0]);
        }
        self.base += CHUNK;
    }

    /// Writes what the ring still holds and the final header. Blocking: run it off the media
    /// thread and off the async runtime's workers. Returns the file and how many chunks were
    /// lost to a full queue.
    pub(crate) fn finish(self) -> Result<(PathBuf, u64), (PathBuf, String)> {
        let Recorder {
            path,
            sink,
            ring,
            base,
            end,
            ..
        } = self;
        let sink = match sink {
            Ok(s) => s,
            Err(e) => return Err((path, e)),
        };
        // Everything queued for this file is on disk before its length is written.
        if let Some(w) = writer() {
            let (tx, rx) = sync_channel(1);
            if w.send(Job::Flush(tx)).is_ok() {
                let _ = rx.recv();
            }
        }
        let start = base % WINDOW;
        let n = end.saturating_sub(base).min(WINDOW);
        let mut tail = Vec::with_capacity(n * FRAME_BYTES);
        let frames = ring.get(start..).unwrap_or_default().iter();
        for f in frames.chain(ring.iter()).take(n) {
            tail.extend_from_slice(&f[0].to_le_bytes());
            tail.extend_from_slice(&f[1].to_le_bytes());
        }
        sink.write_at(&tail, HEADER + (base * FRAME_BYTES) as u64);
        sink.write_at(&wav::pcm16_header(2, end as u64), 0);
        let failed = sink.failed.lock().ok().and_then(|mut f| f.take());
        match failed {
            Some(e) => Err((path, e.to_string())),
            None => Ok((path, sink.dropped.load(Ordering::Relaxed))),
        }
    }
}

/// Opens `<stem>.wav` (or `<stem>-N.wav` when two calls of one id start in one millisecond)
/// for writing, new and readable by this user only.
fn open_new(dir: &Path, stem: &str) -> io::Result<(PathBuf, File)> {
    let mut last = None;
    for n in 0..100 {
        let path = if n == 0 {
            dir.join(format!("{stem}.wav"))
        } else {
            dir.join(format!("{stem}-{n}.wav"))
        };
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free recording name")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::packet::RtpView;

    fn packet(ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(payload);
        assert!(RtpView::parse(&p).is_ok());
        p
    }

    fn read(path: &Path) -> Vec<i16> {
        let mut r = hound::WavReader::open(path).unwrap();
        assert_eq!(r.spec().channels, 2);
        r.samples::<i16>().map(Result::unwrap).collect()
    }

    #[test]
    fn a_long_call_streams_through_the_ring_and_reads_back_exact() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = Recorder::create(dir.path(), "c1", 3600);
        // 10 s on the right, out of order in pairs, past the ring several times over.
        let secs = 10;
        let payload: Vec<u8> = (0..160u32).map(|i| (i % 251) as u8).collect();
        let n = secs * 50;
        // The first packet anchors the channel; then pairs arrive swapped.
        rec.put(Channel::Caller, &packet(1000, &payload), 0);
        for k in (1..n).step_by(2) {
            for j in [k + 1, k].into_iter().filter(|&j| j < n) {
                rec.put(Channel::Caller, &packet(1000 + 160 * j as u32, &payload), 0);
            }
        }
        let (path, dropped) = rec.finish().unwrap();
        assert_eq!(dropped, 0);
        let s = read(&path);
        assert_eq!(s.len(), 2 * 160 * n);
        let want: Vec<i16> = payload.iter().map(|&b| Codec::Pcmu.decode(b)).collect();
        for (i, fr) in s.chunks(2).enumerate() {
            assert_eq!(fr[0], 0, "left is silent");
            assert_eq!(fr[1], want[i % 160], "frame {i}");
        }
    }

    #[test]
    fn files_are_private_and_never_reuse_a_name() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Recorder::create(dir.path(), "same", 10);
        let b = Recorder::create(dir.path(), "same", 10);
        let (pa, _) = a.finish().unwrap();
        let (pb, _) = b.finish().unwrap();
        assert_ne!(pa, pb);
        for p in [&pa, &pb] {
            let name = p.file_name().unwrap().to_str().unwrap();
            assert!(
                name.starts_with("same-") && name.ends_with(".wav"),
                "{name}"
            );
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
            assert_eq!(read(p).len(), 0);
        }
    }

    #[test]
    fn a_jump_far_ahead_leaves_silence_without_queueing_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = Recorder::create(dir.path(), "gap", 3600);
        let payload = [0xffu8; 160]; // PCMU 0xff is silence (0).
        rec.put(Channel::Agent, &packet(0, &[0x00; 160]), 0);
        // 100 s later on the same clock.
        rec.put(Channel::Agent, &packet(800_000, &payload), 0);
        let (path, dropped) = rec.finish().unwrap();
        assert_eq!(dropped, 0);
        let s = read(&path);
        assert_eq!(s.len(), 2 * (800_000 + 160));
        assert_ne!(s[0], 0);
        assert!(s[2 * 160..].iter().all(|&v| v == 0));
    }
}
