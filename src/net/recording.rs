//! A call's stereo recording, streamed to disk as the call goes: the file-writing shell around
//! `rtp::record`, which decides what the file holds and where.
//!
//! The media thread hands each chunk the ring lets go of to the disk writer, one thread shared
//! by all calls, through a bounded queue: it hands a buffer over and never waits for the disk.
//! If the queue is full the chunk is dropped and that half second is silence in the file
//! (counted, reported once when the call ends).
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

use crate::rtp::record::{self, CHUNK, Channel, FRAME_BYTES, RecordRing};

/// Chunks waiting for the disk, all calls together (16 MB).
const QUEUE: usize = 1024;

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

    /// Queues a chunk the ring let go of for the writer, or counts it lost.
    fn queue(self: &Arc<Sink>, offset: u64, frames: &[[i16; 2]]) {
        let mut data = vec![0u8; CHUNK * FRAME_BYTES].into_boxed_slice();
        record::encode(frames, &mut data);
        let job = Job::Chunk {
            to: self.clone(),
            offset,
            data,
        };
        match writer().map(|w| w.try_send(job)) {
            Some(Ok(())) => {}
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
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

pub(crate) struct Recorder {
    path: PathBuf,
    sink: Result<Arc<Sink>, String>,
    ring: RecordRing,
}

impl Recorder {
    /// Creates `<call>-<unix ms>.wav` in `dir` (0600, never over an existing file), the call id
    /// `label` made safe as a file name. A failure is kept and reported when the call ends; the
    /// call goes on unrecorded.
    pub(crate) fn create(dir: &Path, label: &str, max_s: u64) -> Recorder {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let stem = record::stem(label, ms);
        let (path, sink) = match open_new(dir, &stem) {
            Ok((path, file)) => {
                let sink = file
                    .write_all_at(&record::empty_header(), 0)
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
            Err(e) => (dir.join(record::file_name(&stem, 0)), Err(e.to_string())),
        };
        Recorder {
            path,
            sink,
            ring: RecordRing::new(max_s),
        }
    }

    /// Places a packet's audio (G.711 decoded) on its channel; other payloads are ignored.
    /// `now_sample`: 8 kHz samples since the relay started.
    pub(crate) fn put(&mut self, ch: Channel, pkt: &[u8], now_sample: usize) {
        let Ok(sink) = &self.sink else {
            return;
        };
        self.ring.put(ch, pkt, now_sample, &mut |offset, frames| {
            sink.queue(offset, frames)
        });
    }

    /// Writes what the ring still holds and the final header. Blocking: run it off the media
    /// thread and off the async runtime's workers. Returns the file and how many chunks were
    /// lost to a full queue.
    pub(crate) fn finish(self) -> Result<(PathBuf, u64), (PathBuf, String)> {
        let Recorder { path, sink, ring } = self;
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
        let (offset, frames) = ring.tail();
        let mut tail = Vec::with_capacity(frames.size_hint().0 * FRAME_BYTES);
        for f in frames {
            tail.extend_from_slice(&f[0].to_le_bytes());
            tail.extend_from_slice(&f[1].to_le_bytes());
        }
        sink.write_at(&tail, offset);
        sink.write_at(&ring.header(), 0);
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
        let path = dir.join(record::file_name(stem, n));
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
    use crate::dsp::g711::Codec;
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
