//! The charge log: what makes a served call's charge survive a crash of the gateway process.
//!
//! A call's charge reaches the store in the recorder's next group commit (every
//! `journal_flush_ms`), off the request path. To lose nothing when the process dies in between
//! (SIGKILL, a panic, the OOM killer), each charge is first copied into this process's own log
//! file before the response's last bytes go to the client. The file is mapped shared
//! (`mmap(MAP_SHARED)`), so the copy lands in the kernel's page cache with no system call: once
//! the bytes are there, a process crash cannot take them back (the kernel writes the pages to
//! the file whether the process lives or not). Only a power loss can, and the recorder
//! `fdatasync`s the log every `[billing] charge_log_sync_ms` (1 s), so a power loss loses at most
//! that much.
//!
//! Files are segments named `<pid>-<n>.log` in the log directory, each of a fixed size whose
//! disk space is reserved when it is opened (a full disk refuses a segment, never a write into
//! one), each held under an exclusive file lock by the process writing it. An append reserves
//! its bytes with one atomic add and copies the line in, its newline last; a full segment is
//! replaced at once. A segment is deleted once it is closed (the recorder rotates every few
//! seconds) and every charge in it is committed to the store and synced there. At start-up,
//! every segment whose lock can be taken (its writer is gone) is replayed into the store, each
//! charge once by its request id (a charge already committed is skipped), then deleted. The
//! lines are plain text (tab-separated), one charge a line; the unused end of a segment is
//! zeros; a line counts only when it ends with its newline, so a line torn by a crash in the
//! middle of its copy (or by a power loss) is skipped.

use crate::billing::usage::UsageEvent;
use crate::tenancy::{GroupId, KeyId, TenantId, UserId};
use arc_swap::ArcSwap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A segment is closed after this long, or when it is full, whichever comes first.
const SEGMENT_AGE: Duration = Duration::from_secs(2);
/// A segment's size (its touched pages count in the process's resident memory until it is
/// deleted): about 10,000 charges.
const SEGMENT_BYTES: u64 = 2 << 20;
/// How far past the last append the recorder maps pages in, writable, ahead of the appends
/// (`MADV_POPULATE_WRITE`): the first store into a page of a shared file mapping is a page fault
/// (the filesystem readies the page for writing), which the request path should not pay.
const POPULATE_AHEAD: u64 = 256 << 10;
const PAGE: u64 = 4096;

/// `usage_source` of a usage record rebuilt from the charge log.
pub const REPLAYED_SOURCE: &str = "charge_log";

struct Segment {
    id: u32,
    path: PathBuf,
    file: File,
    /// The whole file, mapped shared: appends write here.
    map: mapped::Mapped,
    /// When it became the current segment (a spare's clock starts then, not when it was made).
    opened: Mutex<Instant>,
    /// Bytes reserved by appends; past the end once the segment is full.
    bytes: AtomicU64,
    /// Bytes from the start already mapped in writable (a multiple of the page size).
    populated: AtomicU64,
    /// Charges appended and not yet committed to the store.
    pending: AtomicI64,
    /// The upkeep round that closed it (`u64::MAX` while open): an append that loaded it just
    /// before it was closed has a whole round to finish before it may be deleted.
    closed_round: AtomicU64,
    /// Numbers the charges of the segment.
    count: AtomicU32,
}

/// This process's charge log.
pub struct ChargeLog {
    dir: PathBuf,
    pid: u32,
    next: AtomicU32,
    current: ArcSwap<Segment>,
    /// Segments not yet deleted, the current one included.
    live: Mutex<Vec<Arc<Segment>>>,
    failures: AtomicU64,
    round: AtomicU64,
    /// Cluster mode: a charge is done with once it is in the store *and* in Redis.
    cluster: bool,
    /// How often the current segment is synced to disk (the power-loss window), and when it
    /// last was.
    sync_every: Duration,
    last_sync: Mutex<Instant>,
    /// Size of new segments.
    segment_bytes: u64,
    /// Held while the current segment is replaced.
    rotating: Mutex<()>,
    /// The next segment, opened and populated by the recorder ahead of time, so that replacing
    /// a full one on the request path costs no file system work.
    spare: Mutex<Option<Arc<Segment>>>,
}

impl std::fmt::Debug for ChargeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChargeLog").field("dir", &self.dir).finish()
    }
}

/// What one charge line carries: enough to rebuild the call's usage record.
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    pub request_id: &'a str,
    pub ts_ms: i64,
    pub tenant: TenantId,
    pub key: KeyId,
    pub user: Option<UserId>,
    pub group: Option<GroupId>,
    pub endpoint: &'a str,
    /// The model's configured name (an alias the caller used is resolved).
    pub model: &'a str,
    pub channel: &'a str,
    pub cost_nano: i64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
    pub stream: bool,
    /// Cluster mode: the Redis buckets the call's hold was taken from.
    pub buckets: &'a [i64],
}

/// A charge's place in the log: its segment (high 32 bits) and its number in the segment.
/// Handed back to [`ChargeLog::committed`] once its usage record is in the store (and, in
/// cluster mode, to [`ChargeLog::flushed`] once it is in Redis).
pub type Ticket = u64;

fn segment_of(t: Ticket) -> u32 {
    (t >> 32) as u32
}

fn open_segment(dir: &Path, pid: u32, id: u32, size: u64) -> std::io::Result<Segment> {
    let path = dir.join(format!("{pid}-{id}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    file.try_lock().map_err(|e| {
        std::io::Error::other(format!("charge log {} is locked: {e}", path.display()))
    })?;
    reserve_space(&file, size)?;
    let map = mapped::Mapped::new(&file, usize::try_from(size).map_err(std::io::Error::other)?)?;
    Ok(Segment {
        id,
        path,
        file,
        map,
        opened: Mutex::new(Instant::now()),
        bytes: AtomicU64::new(0),
        populated: AtomicU64::new(0),
        pending: AtomicI64::new(0),
        closed_round: AtomicU64::new(u64::MAX),
        count: AtomicU32::new(0),
    })
}

/// Allocates the file's blocks up front: a store into a mapped page the disk has no room for
/// would kill the process (SIGBUS), a refused segment only costs its charges the log.
fn reserve_space(file: &File, size: u64) -> std::io::Result<()> {
    let len = libc::off_t::try_from(size).map_err(std::io::Error::other)?;
    match fallocate(file, len) {
        0 => Ok(()),
        // Filesystems without fallocate: size the file (sparse) and go on.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(size),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

#[allow(unsafe_code)]
fn fallocate(file: &File, len: libc::off_t) -> libc::c_int {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor and a non-negative range; no memory is passed.
    unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) }
}

impl Segment {
    /// Maps the pages up to `upto` in, writable, so that appends there do not fault (best
    /// effort: a kernel without `MADV_POPULATE_WRITE` leaves the faults to the appends).
    fn populate(&self, upto: u64) {
        let len = self.map.len() as u64;
        let upto = upto.div_ceil(PAGE).saturating_mul(PAGE).min(len);
        let from = self.populated.load(Ordering::Relaxed);
        if upto <= from {
            return;
        }
        if self
            .map
            .populate(from as usize, (upto - from) as usize)
            .is_ok()
        {
            self.populated.store(upto, Ordering::Relaxed);
        }
    }

    /// Reserves room for `line` and copies it in, its newline last (a reader counts a line only
    /// once its newline is there). `false` when the segment is full.
    fn put(&self, line: &[u8]) -> bool {
        let len = line.len() as u64;
        let at = self.bytes.fetch_add(len, Ordering::Relaxed);
        match (usize::try_from(at), line.split_last()) {
            (Ok(at), Some((last, body))) => self.map.write(at, body, Some(*last)),
            (Ok(at), None) => at <= self.map.len(),
            (Err(_), _) => false,
        }
    }
}

/// The only `unsafe` code of tollgate: a file mapped shared, written by many threads at once,
/// each into the range it reserved (no Rust reference to the mapped bytes is ever made, so
/// writes to disjoint ranges do not alias). Nothing in the process reads the mapping.
#[allow(unsafe_code)]
mod mapped {
    use std::fs::File;
    use std::sync::atomic::{compiler_fence, Ordering};

    pub struct Mapped(memmap2::MmapRaw);

    impl Mapped {
        pub fn new(file: &File, len: usize) -> std::io::Result<Mapped> {
            memmap2::MmapOptions::new()
                .len(len)
                .map_raw(file)
                .map(Mapped)
        }

        pub fn len(&self) -> usize {
            self.0.len()
        }

        /// Faults `len` bytes from `at` in, writable, without changing them.
        pub fn populate(&self, at: usize, len: usize) -> std::io::Result<()> {
            self.0.advise_range(memmap2::Advice::PopulateWrite, at, len)
        }

        /// Copies `body` to `at`, then `last` right after it (the compiler may not move that
        /// store before the copy: a crash leaves either the whole, or no, `last`). `false`, and
        /// nothing written, when it does not fit.
        pub fn write(&self, at: usize, body: &[u8], last: Option<u8>) -> bool {
            let len = body.len() + usize::from(last.is_some());
            if at.checked_add(len).is_none_or(|end| end > self.0.len()) {
                return false;
            }
            // SAFETY: `at..at + len` lies inside the mapping (checked above), which lives as
            // long as `self`; callers write only ranges reserved for them alone.
            unsafe {
                let dst = self.0.as_mut_ptr().add(at);
                std::ptr::copy_nonoverlapping(body.as_ptr(), dst, body.len());
                if let Some(b) = last {
                    compiler_fence(Ordering::Release);
                    std::ptr::write_volatile(dst.add(body.len()), b);
                }
            }
            true
        }
    }
}

impl ChargeLog {
    /// Opens a new segment of this process in `dir` (created if missing). `cluster`: charges
    /// are also flushed to Redis, and kept until they are.
    pub fn open(dir: &Path, cluster: bool, sync_every: Duration) -> std::io::Result<ChargeLog> {
        ChargeLog::open_sized(dir, cluster, sync_every, SEGMENT_BYTES)
    }

    fn open_sized(
        dir: &Path,
        cluster: bool,
        sync_every: Duration,
        segment_bytes: u64,
    ) -> std::io::Result<ChargeLog> {
        std::fs::create_dir_all(dir)?;
        let pid = std::process::id();
        let first = Arc::new(open_segment(dir, pid, 0, segment_bytes)?);
        first.populate(POPULATE_AHEAD);
        Ok(ChargeLog {
            dir: dir.to_path_buf(),
            pid,
            next: AtomicU32::new(1),
            current: ArcSwap::new(first.clone()),
            live: Mutex::new(vec![first]),
            failures: AtomicU64::new(0),
            round: AtomicU64::new(0),
            cluster,
            sync_every,
            last_sync: Mutex::new(Instant::now()),
            segment_bytes,
            rotating: Mutex::new(()),
            spare: Mutex::new(None),
        })
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of the log that goes with a SQLite store file.
    pub fn dir_for(store_path: &Path) -> PathBuf {
        let mut name = store_path.as_os_str().to_owned();
        name.push(".charges");
        PathBuf::from(name)
    }

    /// Appends one charge (a copy into the mapped segment, no system call). `None` if it could
    /// not be written (no segment could be opened): the charge then only has the recorder's
    /// commit (the failure is counted and logged).
    pub fn append(&self, c: &Charge<'_>) -> Option<Ticket> {
        // Done with once in the store, and in cluster mode once in each of its Redis buckets.
        let holds = 1 + if self.cluster {
            c.buckets.len() as i64
        } else {
            0
        };
        // The line is built in a buffer of the thread's, reused.
        thread_local! {
            static LINE: std::cell::RefCell<String> =
                std::cell::RefCell::new(String::with_capacity(256));
        }
        LINE.with_borrow_mut(|line| {
            // A full segment is replaced and the line goes into the new one (a line longer than
            // a whole segment never fits).
            loop {
                let seg = self.current.load();
                let ticket = (u64::from(seg.id) << 32)
                    | u64::from(seg.count.fetch_add(1, Ordering::Relaxed));
                seg.pending.fetch_add(holds, Ordering::AcqRel);
                line.clear();
                encode(ticket, c, line);
                if seg.put(line.as_bytes()) {
                    return Some(ticket);
                }
                seg.pending.fetch_sub(holds, Ordering::AcqRel);
                if line.len() as u64 >= self.segment_bytes
                    || !self.replace(&seg, self.round.load(Ordering::Relaxed))
                {
                    break;
                }
            }
            if self.failures.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::error!(dir = %self.dir.display(), "charge log: append failed; charges rely on the recorder alone");
            }
            None
        })
    }

    /// Closes `full` (if it is still the current segment) and opens the next one; `full` may be
    /// deleted from the upkeep round after `round` on (an append that loaded it just before has
    /// that long to finish). `false` when no segment could be opened.
    fn replace(&self, full: &Segment, round: u64) -> bool {
        let _one = self.rotating.lock().unwrap_or_else(|p| p.into_inner());
        if self.current.load().id != full.id {
            return true; // another thread did it
        }
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        match spare.map_or_else(|| self.open_next(), Ok) {
            Ok(s) => {
                *s.opened.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                self.live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(s.clone());
                self.current.store(s);
                full.closed_round.store(round, Ordering::Release);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "charge log: cannot open a new segment");
                false
            }
        }
    }

    fn open_next(&self) -> std::io::Result<Arc<Segment>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        open_segment(&self.dir, self.pid, id, self.segment_bytes).map(Arc::new)
    }

    /// The usage records carrying these tickets are committed to the store.
    pub fn committed(&self, tickets: impl Iterator<Item = Ticket>) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for t in tickets {
            if let Some(s) = live.iter().find(|s| s.id == segment_of(t)) {
                s.pending.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Cluster mode, before a flush batch is sent to Redis: the charges it carries, under the
    /// batch's id. After a crash, a batch with no [`ChargeLog::flushed`] line is sent again
    /// with the same id (Redis applies a batch id once), and a charge in no batch is sent anew.
    /// `charges`: (bucket, amount) as sent; `tickets`: (bucket, ticket) of the charges in it.
    pub fn intent(&self, batch: &str, charges: &[(i64, i64)], tickets: &[(i64, Ticket)]) {
        let mut line = String::with_capacity(32 + charges.len() * 24 + tickets.len() * 24);
        line.push_str("I\t");
        // Batch ids carry the node id (configuration): kept to one field.
        line.extend(
            batch
                .chars()
                .map(|c| if c == '\t' || c == '\n' { ' ' } else { c }),
        );
        line.push('\t');
        for (i, (b, a)) in charges.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(itoa::Buffer::new().format(*b));
            line.push(':');
            line.push_str(itoa::Buffer::new().format(*a));
        }
        line.push('\t');
        if tickets.is_empty() {
            line.push('-');
        }
        for (i, (b, t)) in tickets.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(itoa::Buffer::new().format(*t));
            line.push('@');
            line.push_str(itoa::Buffer::new().format(*b));
        }
        line.push('\n');
        self.write_line(&line);
    }

    /// Cluster mode: the batch is applied in Redis (or abandoned: never to be sent again); the
    /// charges it carried are done with there.
    pub fn flushed(&self, batch: &str, tickets: &[(i64, Ticket)]) {
        let mut line = String::with_capacity(8 + batch.len());
        line.push_str("F\t");
        line.extend(
            batch
                .chars()
                .map(|c| if c == '\t' || c == '\n' { ' ' } else { c }),
        );
        line.push('\n');
        self.write_line(&line);
        self.committed(tickets.iter().map(|(_, t)| *t));
    }

    fn write_line(&self, line: &str) {
        while (line.len() as u64) < self.segment_bytes {
            let seg = self.current.load();
            if seg.put(line.as_bytes()) {
                return;
            }
            if !self.replace(&seg, self.round.load(Ordering::Relaxed)) {
                break;
            }
        }
        tracing::warn!("charge log: write failed (no segment could be opened)");
    }

    /// Recorder upkeep, once a round: syncs the current segment to disk (the power-loss window),
    /// closes it when it is old or large, and deletes closed segments whose charges are all
    /// committed, after `store_synced` made the store's commits durable (called only when
    /// something is to be deleted).
    pub fn upkeep(&self, store_synced: impl FnOnce() -> bool) {
        let round = self.round.fetch_add(1, Ordering::Relaxed);
        let cur = self.current.load_full();
        {
            // An append into a page being written back waits for it: syncing every round
            // would stall the request path; every `sync_every` bounds the power-loss window.
            let mut last = self.last_sync.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= self.sync_every {
                if let Err(e) = cur.file.sync_data() {
                    tracing::warn!(error = %e, "charge log: sync failed");
                }
                *last = Instant::now();
            }
        }
        let age = cur
            .opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        if age >= SEGMENT_AGE || cur.bytes.load(Ordering::Relaxed) >= cur.map.len() as u64 {
            self.replace(&cur, round);
        }
        // Pages ahead of the appends, and a spare segment, readied here rather than on the
        // request path.
        let cur = self.current.load_full();
        cur.populate(cur.bytes.load(Ordering::Relaxed) + POPULATE_AHEAD);
        {
            let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
            if spare.is_none() {
                match self.open_next() {
                    Ok(s) => {
                        s.populate(POPULATE_AHEAD);
                        *spare = Some(s);
                    }
                    Err(e) => tracing::warn!(error = %e, "charge log: cannot open a spare segment"),
                }
            }
        }
        let done: Vec<Arc<Segment>> = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.iter()
                .filter(|s| s.closed_round.load(Ordering::Acquire) < round)
                .filter(|s| s.pending.load(Ordering::Acquire) <= 0)
                .cloned()
                .collect()
        };
        for s in &done {
            // Its last appends were synced when it was closed or since; make sure.
            let _ = s.file.sync_data();
        }
        if done.is_empty() || !store_synced() {
            return;
        }
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for s in done {
            if let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!(error = %e, path = %s.path.display(), "charge log: cannot delete a segment");
                continue;
            }
            live.retain(|x| x.id != s.id);
        }
    }

    /// Syncs the current segment (at shutdown).
    pub fn sync(&self) {
        let _ = self.current.load().file.sync_data();
    }
}

/// A text field: the request id (ours), the endpoint (static), the model and channel names (the
/// configuration's, validated without whitespace), so never a tab or a newline.
fn push_field(out: &mut String, s: &str) {
    debug_assert!(!s.contains(['\t', '\n']), "{s:?}");
    out.push_str(s);
    out.push('\t');
}

fn push_num(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
    out.push('\t');
}

/// `C`, ticket, request id, time, tenant, key, user (`-`), group (`-`), endpoint, model,
/// channel, cost, prompt, cached, cache writes, completion, reasoning tokens, stream (0/1),
/// Redis buckets (`,`-separated; `-` in embedded mode), newline.
fn encode(ticket: Ticket, c: &Charge<'_>, out: &mut String) {
    out.push_str("C\t");
    push_num(out, ticket);
    push_field(out, c.request_id);
    push_num(out, c.ts_ms);
    push_num(out, c.tenant.0);
    push_num(out, c.key.0);
    match c.user {
        Some(u) => push_num(out, u.0),
        None => out.push_str("-\t"),
    }
    match c.group {
        Some(g) => push_num(out, g.0),
        None => out.push_str("-\t"),
    }
    push_field(out, c.endpoint);
    push_field(out, c.model);
    push_field(out, c.channel);
    push_num(out, c.cost_nano);
    push_num(out, c.prompt_tokens);
    push_num(out, c.cached_tokens);
    push_num(out, c.cache_write_tokens);
    push_num(out, c.completion_tokens);
    push_num(out, c.reasoning_tokens);
    out.push(if c.stream { '1' } else { '0' });
    out.push('\t');
    if c.buckets.is_empty() {
        out.push('-');
    }
    for (i, b) in c.buckets.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(itoa::Buffer::new().format(*b));
    }
    out.push('\n');
}

/// A charge line: its ticket, the usage record it stands for and its Redis buckets (`None`: not
/// a whole, valid charge line).
fn decode(line: &str) -> Option<(Ticket, UsageEvent, Vec<i64>)> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() != 19 || f[0] != "C" {
        return None;
    }
    let int = |s: &str| s.parse::<i64>().ok();
    let uint = |s: &str| s.parse::<u64>().ok();
    let opt = |s: &str| {
        if s == "-" {
            Some(None)
        } else {
            int(s).map(Some)
        }
    };
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let ticket = uint(f[1])?;
    let f = &f[1..];
    let e = UsageEvent {
        request_id: f[1].to_string(),
        ts_ms: int(f[2])?,
        tenant_id: Some(TenantId(int(f[3])?)),
        key_id: Some(KeyId(int(f[4])?)),
        user_id: opt(f[5])?.map(UserId),
        group_id: opt(f[6])?.map(GroupId),
        endpoint: f[7].to_string(),
        path: None,
        model_requested: some(f[8]),
        model_used: None,
        channel: some(f[9]),
        cost_nano: int(f[10])?,
        prompt_tokens: uint(f[11])?,
        cached_tokens: uint(f[12])?,
        cache_write_tokens: uint(f[13])?,
        completion_tokens: uint(f[14])?,
        reasoning_tokens: uint(f[15])?,
        stream: match f[16] {
            "0" => false,
            "1" => true,
            _ => return None,
        },
        status: 200,
        usage_source: REPLAYED_SOURCE.to_string(),
        ..UsageEvent::default()
    };
    let buckets = match f[17] {
        "-" => Vec::new(),
        list => list.split(',').map(int).collect::<Option<Vec<i64>>>()?,
    };
    (!e.request_id.is_empty() && e.cost_nano > 0).then_some((ticket, e, buckets))
}

/// An `I` line after its tag: id, `bucket:amount,...`, `ticket@bucket,...` (or `-`).
pub type Intent = (String, Vec<(i64, i64)>, Vec<(i64, Ticket)>);

fn decode_intent(rest: &str) -> Option<Intent> {
    let mut parts = rest.split('\t');
    let (id, charges, tickets) = (parts.next()?, parts.next()?, parts.next()?);
    let pair = |s: &str, sep: char| -> Option<(i64, i64)> {
        let (a, b) = s.split_once(sep)?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let charges = charges
        .split(',')
        .map(|c| pair(c, ':'))
        .collect::<Option<Vec<_>>>()?;
    let tickets = match tickets {
        "-" => Vec::new(),
        list => list
            .split(',')
            .map(|t| {
                let (ticket, bucket) = pair(t, '@')?;
                Some((bucket, ticket as Ticket))
            })
            .collect::<Option<Vec<_>>>()?,
    };
    Some((id.to_string(), charges, tickets))
}

/// What the segments of a process that is gone hold.
#[derive(Debug, Default)]
pub struct Orphans {
    /// Charges: ticket, usage record, Redis buckets.
    pub charges: Vec<(Ticket, UsageEvent, Vec<i64>)>,
    /// Cluster mode: flush batches announced (id, (bucket, amount) sent, (bucket, ticket)
    /// carried) and the ids known applied or abandoned.
    pub intents: Vec<Intent>,
    pub flushed: std::collections::HashSet<String>,
    /// The segments, locked by this process until they are deleted.
    pub files: Vec<(PathBuf, File)>,
}

impl Orphans {
    /// The usage records of the charges.
    pub fn events(&self) -> Vec<UsageEvent> {
        self.charges.iter().map(|(_, e, _)| e.clone()).collect()
    }

    /// Cluster mode: the flush batches to send to Redis for charges it may not have: each
    /// announced batch with no `F` line, again under its own id, and one batch of the charges in
    /// no announced batch, under an id made of the segments' names (the same on a retry).
    pub fn unflushed(&self) -> Vec<(String, Vec<(i64, i64)>)> {
        let mut out = Vec::new();
        let mut announced = std::collections::HashSet::new();
        for (id, charges, tickets) in &self.intents {
            announced.extend(tickets.iter().copied());
            if !self.flushed.contains(id) {
                out.push((id.clone(), charges.clone()));
            }
        }
        let mut rest: std::collections::BTreeMap<i64, i64> = Default::default();
        for (t, e, buckets) in &self.charges {
            for b in buckets {
                if !announced.contains(&(*b, *t)) {
                    *rest.entry(*b).or_default() += e.cost_nano;
                }
            }
        }
        if !rest.is_empty() {
            let mut names: Vec<String> = self
                .files
                .iter()
                .filter_map(|(p, _)| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect();
            names.sort();
            out.push((
                format!("replay-{}", names.join("+")),
                rest.into_iter().collect(),
            ));
        }
        out.retain(|(_, c)| !c.is_empty());
        out
    }

    /// Deletes the segments (once their charges are where they belong).
    pub fn remove(self) -> std::io::Result<()> {
        for (path, _lock) in &self.files {
            std::fs::remove_file(path)?;
        }
        Ok(())
    }
}

/// The whole lines of a segment: the bytes before a newline, with no zero among them. The
/// unused end of a segment is zeros, and a line whose copy a crash interrupted lacks its newline
/// (the bytes after it are zeros or the next line's), so neither is taken for a charge.
fn whole_lines(bytes: &[u8]) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'\n' => {
                if let Some(line) = bytes
                    .get(start..i)
                    .and_then(|l| std::str::from_utf8(l).ok())
                {
                    out.push(line);
                }
                start = i + 1;
            }
            0 => start = i + 1,
            _ => {}
        }
    }
    out
}

/// Every segment in `dir` that no live process holds (a previous run that is gone), read.
pub fn orphaned(dir: &Path) -> std::io::Result<Orphans> {
    let mut o = Orphans::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(o),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("log") {
            continue;
        }
        let file = File::open(&path)?;
        if file.try_lock().is_err() {
            continue; // a live process's segment
        }
        let bytes = std::fs::read(&path)?;
        for line in whole_lines(&bytes) {
            match line.split_once('\t') {
                Some(("C", _)) => o.charges.extend(decode(line)),
                Some(("I", rest)) => {
                    if let Some(i) = decode_intent(rest) {
                        o.intents.push(i);
                    }
                }
                Some(("F", id)) => {
                    o.flushed.insert(id.to_string());
                }
                _ => {}
            }
        }
        o.files.push((path, file));
    }
    Ok(o)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::io::Write;

    fn charge(id: &str) -> Charge<'_> {
        Charge {
            request_id: id,
            ts_ms: 1_700_000_000_000,
            tenant: TenantId(3),
            key: KeyId(7),
            user: Some(UserId(11)),
            group: None,
            endpoint: "chat",
            model: "gpt-4o",
            channel: "main",
            cost_nano: 123_456,
            prompt_tokens: 100,
            cached_tokens: 20,
            cache_write_tokens: 5,
            completion_tokens: 30,
            reasoning_tokens: 4,
            stream: true,
            buckets: &[3, -5],
        }
    }

    #[test]
    fn a_line_decodes_to_the_charge_it_encodes() {
        let mut line = String::new();
        encode(42, &charge("req_1"), &mut line);
        let (ticket, e, buckets) = decode(line.trim_end_matches('\n')).unwrap();
        assert_eq!((ticket, buckets), (42, vec![3, -5]));
        assert_eq!(e.request_id, "req_1");
        assert_eq!(e.tenant_id, Some(TenantId(3)));
        assert_eq!(e.key_id, Some(KeyId(7)));
        assert_eq!(e.user_id, Some(UserId(11)));
        assert_eq!(e.group_id, None);
        assert_eq!(e.model_requested.as_deref(), Some("gpt-4o"));
        assert_eq!(e.channel.as_deref(), Some("main"));
        assert_eq!(
            (
                e.cost_nano,
                e.prompt_tokens,
                e.cached_tokens,
                e.cache_write_tokens
            ),
            (123_456, 100, 20, 5)
        );
        assert_eq!(
            (e.completion_tokens, e.reasoning_tokens, e.stream),
            (30, 4, true)
        );
        assert_eq!(e.usage_source, REPLAYED_SOURCE);
        // Torn or foreign lines are not charges.
        for bad in [&line[..line.len() / 2], "", "C\tx", "X\t1"] {
            assert!(decode(bad.trim_end_matches('\n')).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_live_segment_is_not_replayed_a_dead_one_is_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = ChargeLog::open(dir.path(), false, Duration::ZERO).unwrap();
        assert_eq!(log.append(&charge("a")), Some(0));
        // Held by this (live) log: not an orphan.
        assert!(orphaned(dir.path()).unwrap().charges.is_empty());
        drop(log); // the writer is gone: its lock with it
                   // A torn last line, as a power loss may leave.
        let path = dir.path().join(format!("{}-0.log", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"C\treq_torn\t17").unwrap();
        let o = orphaned(dir.path()).unwrap();
        let events = o.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].request_id, "a");
        assert_eq!(o.files.len(), 1);
    }

    /// Cluster mode: after a crash, a batch announced but not confirmed is sent again under its
    /// id, charges in no batch go in a batch of their own, confirmed ones are not sent.
    #[test]
    fn unflushed_charges_are_found_from_the_intent_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = ChargeLog::open(dir.path(), true, Duration::ZERO).unwrap();
        let a = log.append(&charge("a")).unwrap(); // buckets 3 and -5, 123,456 each
        let b = log.append(&charge("b")).unwrap();
        let c = log.append(&charge("c")).unwrap();
        let d = log.append(&charge("d")).unwrap();
        log.intent("f1", &[(3, 123_456), (-5, 123_456)], &[(3, a), (-5, a)]);
        log.flushed("f1", &[(3, a), (-5, a)]);
        // b and c in f2 (not confirmed); c's quota bucket and d in no batch yet.
        log.intent(
            "f2",
            &[(3, 246_912), (-5, 123_456)],
            &[(3, b), (3, c), (-5, b)],
        );
        let _ = d;
        drop(log);
        let o = orphaned(dir.path()).unwrap();
        let mut u = o.unflushed();
        u.sort();
        assert_eq!(u.len(), 2, "{u:?}");
        assert_eq!(u[0], ("f2".to_string(), vec![(3, 246_912), (-5, 123_456)]));
        assert!(u[1].0.starts_with("replay-"));
        assert_eq!(u[1].1, vec![(-5, 246_912), (3, 123_456)]);
    }

    /// A crash in the middle of a copy leaves part of a line and zeros where its newline should
    /// be, with other appends' whole lines after it: only the whole lines are charges.
    #[test]
    fn a_line_torn_by_a_crash_mid_copy_is_skipped_the_lines_after_it_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let log = ChargeLog::open(dir.path(), false, Duration::ZERO).unwrap();
        log.append(&charge("a")).unwrap();
        let mut torn = String::new();
        encode(99, &charge("torn"), &mut torn);
        {
            // Reserve a whole line's room, copy only its first half (the writer died there).
            let seg = log.current.load();
            let at = seg.bytes.fetch_add(torn.len() as u64, Ordering::Relaxed) as usize;
            let half = &torn.as_bytes()[..torn.len() / 2];
            assert!(seg.map.write(at, half, None));
        }
        log.append(&charge("b")).unwrap();
        drop(log);
        let ids: Vec<String> = orphaned(dir.path())
            .unwrap()
            .events()
            .into_iter()
            .map(|e| e.request_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }

    /// A full segment is replaced on the spot: every charge lands in some segment, with a
    /// ticket naming it, and all of them are read back.
    #[test]
    fn a_full_segment_is_replaced_and_no_charge_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut one = String::new();
        encode(0, &charge("r-000"), &mut one);
        // Room for about three lines a segment.
        let log = Arc::new(
            ChargeLog::open_sized(dir.path(), false, Duration::ZERO, one.len() as u64 * 3 + 7)
                .unwrap(),
        );
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| log.append(&charge(&format!("r-{t}{i:02}"))).unwrap())
                        .collect::<Vec<Ticket>>()
                })
            })
            .collect();
        let tickets: Vec<Ticket> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(tickets.len(), 100);
        let segments: std::collections::HashSet<u32> =
            tickets.iter().map(|t| segment_of(*t)).collect();
        assert!(segments.len() >= 30, "{} segments", segments.len());
        drop(log);
        let o = orphaned(dir.path()).unwrap();
        let mut ids: Vec<String> = o.events().into_iter().map(|e| e.request_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 100);
        let mut found: Vec<Ticket> = o.charges.iter().map(|c| c.0).collect();
        let mut sent = tickets.clone();
        found.sort_unstable();
        sent.sort_unstable();
        assert_eq!(found, sent, "each charge under the ticket it was given");
    }

    #[test]
    fn closed_segments_are_deleted_once_committed_and_synced() {
        let dir = tempfile::tempdir().unwrap();
        let log = ChargeLog::open(dir.path(), false, Duration::ZERO).unwrap();
        let t = log.append(&charge("a")).unwrap();
        // Force a rotation by age.
        std::thread::sleep(SEGMENT_AGE);
        log.upkeep(|| true);
        // The segments, not counting the spare the recorder keeps ready.
        let files = || {
            std::fs::read_dir(dir.path()).unwrap().count()
                - usize::from(log.spare.lock().unwrap().is_some())
        };
        assert_eq!(files(), 2, "the old segment waits for its charge");
        log.committed(std::iter::once(t));
        log.upkeep(|| false);
        assert_eq!(files(), 2, "not deleted before the store is synced");
        log.upkeep(|| true);
        assert_eq!(files(), 1);
        // A segment with nothing pending still outlives the round that closed it.
        std::thread::sleep(SEGMENT_AGE);
        log.upkeep(|| true);
        assert_eq!(files(), 2, "not deleted in the round that closed it");
        log.upkeep(|| true);
        assert_eq!(files(), 1);
    }
}
