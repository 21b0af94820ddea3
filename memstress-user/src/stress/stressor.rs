//! The stressor: a worker process that makes its cgroup's charge grow by exactly the bytes it
//! is told.
//!
//! Workers are this same executable re-run as `memstress __stressor` (hidden, parsed without
//! clap so that the worker stays small), started by the controller inside the target cgroup.
//! A worker talks to the controller over its stdin and stdout, one line each:
//!
//! * controller → worker: `charge <bytes>` (make this process's whole charge to the cgroup
//!   this much: payload plus its own footprint), `size <bytes>` (hold exactly this payload),
//!   `quit`.
//! * worker → controller: `filling <payload bytes> <charge bytes>` after each step of a
//!   change, `held <payload bytes> <charge bytes>` when it is complete, `error <text>` before
//!   exiting on failure.
//!
//! Why "charge": a process costs its cgroup more than the memory it allocates: its own
//! runtime (~0.2 MiB of anonymous pages), page tables (4 KiB per 2 MiB held) and kernel
//! stack. Peers ignore this and their workers overshoot; memstress measures its own footprint
//! in /proc/self/status and holds that much less, so that `--size` is what the cgroup's usage
//! rises by.
//!
//! Memory is anonymous `mmap`, each page written once (or populated with
//! `MADV_POPULATE_WRITE`), in chunks of at most [`CHUNK`] bytes so that growth is reported as
//! it happens. While holding, the worker blocks in `read(2)` on its stdin: ~0% CPU. When the
//! controller goes away (stdin closes, or `PR_SET_PDEATHSIG`), the worker exits.

use std::{
    ffi::CString,
    fs,
    io::{self, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    ptr,
    time::{Duration, Instant},
};

use crate::spec::{Fill, Kind, Pattern, STRESSOR_COMM};

/// Largest mapping added per step; a `filling` report follows each.
pub const CHUNK: u64 = 32 << 20;

/// Kernel memory charged per process that /proc/self/status does not show: the kernel stack
/// (THREAD_SIZE, 16 KiB on x86-64) and the accounted slab objects of a task (task_struct,
/// mm_struct, VMAs, files, signal: ~8 KiB).
pub const KERNEL_OVERHEAD: u64 = 24 << 10;

/// How often a keep-dirty worker wakes to rewrite a slice of its pages.
const DIRTY_TICK: Duration = Duration::from_millis(100);

/// Worker options.
#[derive(Clone, Debug)]
pub struct WorkerArgs {
    /// Name shown as the process's comm (at most 15 bytes).
    pub name: String,
    /// Kind of memory.
    pub kind: Kind,
    /// How pages are faulted in.
    pub fill: Fill,
    /// What to do once full.
    pub pattern: Pattern,
    /// Keep-dirty: rewrite every page once per this period.
    pub rewrite_every: Duration,
    /// Ask for transparent huge pages (`MADV_HUGEPAGE`).
    pub thp: bool,
    /// Lock the memory (`mlock`), so it is never reclaimed or swapped.
    pub mlock: bool,
    /// Shmem written into its memfd rather than mapped: charged to the cgroup, but in no
    /// process's RSS, so the worker's badness stays its footprint (replay's allocation).
    pub unmapped: bool,
    /// Directory for `Kind::File`.
    pub file_dir: Option<PathBuf>,
    /// Kernel memory the cgroup is charged per page of a shmem or file payload, beside the
    /// page itself (page-cache tree nodes, a file system's buffer heads): see
    /// [`kernel_bytes_per_page`].
    pub kernel_per_page: u64,
    /// What to hold from the start, before any command arrives.
    pub initial: Option<Command>,
}

impl Default for WorkerArgs {
    fn default() -> Self {
        Self {
            name: STRESSOR_COMM.to_owned(),
            kind: Kind::Anon,
            fill: Fill::Touch,
            pattern: Pattern::Hold,
            rewrite_every: Duration::from_secs(5),
            thp: false,
            mlock: false,
            unmapped: false,
            file_dir: None,
            kernel_per_page: 0,
            initial: None,
        }
    }
}

impl WorkerArgs {
    /// The command line that starts a worker with these options (after the executable).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "__stressor".to_owned(),
            "--name".to_owned(),
            self.name.clone(),
        ];
        let mut push = |a: &str, b: String| {
            args.push(a.to_owned());
            args.push(b);
        };
        match self.kind {
            Kind::Anon => {}
            Kind::Shmem => push("--kind", "shmem".to_owned()),
            Kind::File => push("--kind", "file".to_owned()),
        }
        if self.fill == Fill::Populate {
            push("--fill", "populate".to_owned());
        }
        if self.pattern == Pattern::KeepDirty {
            push(
                "--keep-dirty-ms",
                self.rewrite_every.as_millis().to_string(),
            );
        }
        if let Some(dir) = &self.file_dir {
            push("--file-dir", dir.display().to_string());
        }
        if self.kernel_per_page > 0 {
            push("--kernel-per-page", self.kernel_per_page.to_string());
        }
        match self.initial {
            Some(Command::Charge { bytes, .. }) => push("--charge", bytes.to_string()),
            Some(Command::Size { bytes, .. }) => push("--size", bytes.to_string()),
            _ => {}
        }
        if self.thp {
            args.push("--thp".to_owned());
        }
        if self.mlock {
            args.push("--mlock".to_owned());
        }
        if self.unmapped {
            args.push("--unmapped".to_owned());
        }
        args
    }

    /// Parses the flags written by [`Self::to_args`] (after `__stressor`).
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, WorkerArgsError> {
        use WorkerArgsError::{Missing, Unknown, Value};
        let mut parsed = Self::default();
        let number = |v: Option<String>, flag: &'static str| {
            v.and_then(|v| v.parse::<u64>().ok()).ok_or(Missing(flag))
        };
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "--name" => parsed.name = args.next().ok_or(Missing("--name"))?,
                "--kind" => {
                    parsed.kind = match args.next().as_deref() {
                        Some("anon") => Kind::Anon,
                        Some("shmem") => Kind::Shmem,
                        Some("file") => Kind::File,
                        _ => return Err(Value("--kind", "anon, shmem or file")),
                    }
                }
                "--fill" => {
                    parsed.fill = match args.next().as_deref() {
                        Some("touch") => Fill::Touch,
                        Some("populate") => Fill::Populate,
                        _ => return Err(Value("--fill", "touch or populate")),
                    }
                }
                "--keep-dirty-ms" => {
                    parsed.pattern = Pattern::KeepDirty;
                    parsed.rewrite_every =
                        Duration::from_millis(number(args.next(), "--keep-dirty-ms")?.max(100));
                }
                "--file-dir" => {
                    parsed.file_dir =
                        Some(PathBuf::from(args.next().ok_or(Missing("--file-dir"))?));
                }
                "--kernel-per-page" => {
                    parsed.kernel_per_page = number(args.next(), "--kernel-per-page")?;
                }
                "--thp" => parsed.thp = true,
                "--mlock" => parsed.mlock = true,
                "--unmapped" => parsed.unmapped = true,
                "--charge" => {
                    parsed.initial = Some(Command::Charge {
                        bytes: number(args.next(), "--charge")?,
                        seq: 0,
                    });
                }
                "--size" => {
                    parsed.initial = Some(Command::Size {
                        bytes: number(args.next(), "--size")?,
                        seq: 0,
                    });
                }
                other => return Err(Unknown(other.to_owned())),
            }
        }
        Ok(parsed)
    }
}

/// A worker's command line the controller did not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerArgsError {
    /// A flag without its value (or a number that is not one).
    #[error("{0} needs a value")]
    Missing(&'static str),
    /// A flag whose value is not one of those it takes.
    #[error("{0} takes {1}")]
    Value(&'static str, &'static str),
    /// A flag workers do not have.
    #[error("unknown flag `{0}`")]
    Unknown(String),
}

/// A worker→controller report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// Growing: `payload` bytes so far.
    Filling {
        /// Bytes of memory held so far.
        payload: u64,
        /// The process's estimated charge so far.
        charge: u64,
    },
    /// Command `seq` is done: holding `payload` bytes; the whole process costs its cgroup
    /// `charge` bytes.
    Held {
        /// Bytes of memory held for the stress.
        payload: u64,
        /// The process's estimated charge: payload plus its own footprint.
        charge: u64,
        /// The command this completes.
        seq: u64,
    },
    /// Failed; exiting.
    Error(String),
}

impl Report {
    /// The line to send.
    pub fn line(&self) -> String {
        match self {
            Self::Filling { payload, charge } => format!("filling {payload} {charge}\n"),
            Self::Held {
                payload,
                charge,
                seq,
            } => format!("held {payload} {charge} {seq}\n"),
            Self::Error(e) => format!("error {e}\n"),
        }
    }

    /// Parses one line.
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim();
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        if word == "error" {
            return Some(Self::Error(rest.to_owned()));
        }
        let nums: Vec<u64> = rest
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        match (word, nums.as_slice()) {
            ("held", [payload, charge, seq]) => Some(Self::Held {
                payload: *payload,
                charge: *charge,
                seq: *seq,
            }),
            ("filling", [payload, charge]) => Some(Self::Filling {
                payload: *payload,
                charge: *charge,
            }),
            _ => None,
        }
    }
}

/// A controller→worker command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Make the whole process's charge `bytes`.
    Charge {
        /// Target charge.
        bytes: u64,
        /// Sequence number echoed in the `held` report.
        seq: u64,
    },
    /// Hold exactly `bytes` of payload.
    Size {
        /// Target payload.
        bytes: u64,
        /// Sequence number echoed in the `held` report.
        seq: u64,
    },
    /// Exit.
    Quit,
}

impl Command {
    /// The line to send.
    pub fn line(&self) -> String {
        match self {
            Self::Charge { bytes, seq } => format!("charge {bytes} {seq}\n"),
            Self::Size { bytes, seq } => format!("size {bytes} {seq}\n"),
            Self::Quit => "quit\n".to_owned(),
        }
    }

    /// Parses one line.
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim();
        if line == "quit" {
            return Some(Self::Quit);
        }
        let mut words = line.split_whitespace();
        let word = words.next()?;
        let bytes = words.next()?.parse().ok()?;
        let seq = words.next().map_or(Some(0), |s| s.parse().ok())?;
        match word {
            "charge" => Some(Self::Charge { bytes, seq }),
            "size" => Some(Self::Size { bytes, seq }),
            _ => None,
        }
    }
}

/// This process's anonymous footprint as its cgroup is charged for it, from
/// /proc/self/status: anonymous RSS, page tables, plus [`KERNEL_OVERHEAD`]. Shared and file
/// pages are not counted: the mapped executable's pages were charged to whoever read them
/// first (on a tmpfs root they even show as RssShmem), and a shmem or file payload is
/// counted exactly by the worker itself.
pub fn own_charge() -> io::Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    Ok(charge_from_status(&status))
}

/// [`own_charge`] from the text of a status file.
pub fn charge_from_status(status: &str) -> u64 {
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    kib("RssAnon:") + kib("VmPTE:") + KERNEL_OVERHEAD
}

/// The default directory for page-cache stress: a disk-backed one (page cache on tmpfs is
/// shmem, which is not reclaimable like page cache).
pub fn default_file_dir() -> PathBuf {
    ["/var/tmp", "/tmp"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Whether `dir` is on tmpfs (where "file" pages are shmem).
pub fn is_tmpfs(dir: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    statfs(dir).is_some_and(|(magic, _)| magic == TMPFS_MAGIC)
}

/// An unnamed file in `dir` (O_TMPFILE, or created and unlinked at once): it disappears
/// with the worker, whatever kills it.
fn anonymous_file(dir: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: open with a valid path; the fd is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd >= 0 {
        // SAFETY: a fresh fd.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    for n in 0..1000 {
        let path = dir.join(format!(".memstress-{pid}-{n}"));
        let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: as above.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd >= 0 {
            // SAFETY: unlinking the file we just created.
            unsafe { libc::unlink(c.as_ptr()) };
            // SAFETY: a fresh fd.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::AlreadyExists {
            return Err(io::Error::new(
                err.kind(),
                format!("{}: {err}", dir.display()),
            ));
        }
    }
    Err(io::Error::other(format!(
        "cannot create a file in {}",
        dir.display()
    )))
}

/// One block of `0x01` bytes for writing page cache.
static BLOCK: [u8; 1 << 16] = [1; 1 << 16];

struct Chunk {
    /// Mapping (anon, shmem); null for a file.
    ptr: *mut u8,
    len: usize,
    /// memfd (shmem) or unnamed file (file).
    fd: Option<OwnedFd>,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: unmapping a mapping this chunk owns.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

/// The memory a worker holds.
struct Holding {
    chunks: Vec<Chunk>,
    total: u64,
    page: usize,
    args: WorkerArgs,
    /// This process's charge, given the payload held ([`own_charge`] outside tests).
    measure: fn(&WorkerArgs, u64) -> io::Result<u64>,
    /// Keep-dirty: next page to rewrite (over all chunks).
    cursor: u64,
}

fn measure_own(args: &WorkerArgs, payload: u64) -> io::Result<u64> {
    Ok(own_charge()? + payload_charge(args, payload))
}

/// What a payload costs beyond what /proc/self/status shows: nothing for anonymous memory
/// (RssAnon and VmPTE count it); for shmem and page cache, the pages and the kernel memory
/// that tracks them.
fn payload_charge(args: &WorkerArgs, payload: u64) -> u64 {
    match args.kind {
        Kind::Anon => 0,
        Kind::Shmem | Kind::File => {
            payload + payload / crate::size::page_size() * args.kernel_per_page
        }
    }
}

/// Kernel memory a cgroup is charged per page of a `kind` payload, beside the page itself,
/// for memory no /proc file shows per process: the page cache's tree nodes (an `xa_node`
/// of 64 slots, and one interior node per 64 of those) for shmem and files, and for files
/// on a file system that tracks blocks with buffer heads (ext2/3/4, FAT, exFAT), one
/// `buffer_head` per block. Each slab object is charged its slab size and the 8-byte
/// pointer to its cgroup. Sizes come from /proc/slabinfo where it is readable, else the
/// x86-64 sizes of the 6.x kernels. On ext4 with 4 KiB blocks, 121 bytes per page: 3 % of a
/// page-cache payload, which a stressor that ignored it would overshoot by.
pub fn kernel_bytes_per_page(kind: Kind, file_dir: &Path) -> u64 {
    const OBJCG_POINTER: u64 = 8;
    const XA_CHUNK: u64 = 64;
    if kind == Kind::Anon {
        return 0;
    }
    let slabinfo = fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    let object = |name: &str, fallback: u64| {
        slab_object_size(&slabinfo, name).unwrap_or(fallback) + OBJCG_POINTER
    };
    let tree = object("radix_tree_node", 584) * (XA_CHUNK + 1) / (XA_CHUNK * XA_CHUNK);
    if kind == Kind::Shmem {
        return tree;
    }
    let Some((magic, block)) = statfs(file_dir) else {
        return tree;
    };
    if !BUFFER_HEAD_FILESYSTEMS.contains(&magic) || block == 0 {
        return tree;
    }
    tree + (crate::size::page_size() / block).max(1) * object("buffer_head", 104)
}

/// `f_type` of file systems whose regular files keep a `buffer_head` per block in the page
/// cache: ext2/3/4, FAT, exFAT.
const BUFFER_HEAD_FILESYSTEMS: [i64; 3] = [0xEF53, 0x4d44, 0x2011_BAB0];

/// A slab cache's object size (`s->size`, the 4th column of /proc/slabinfo).
fn slab_object_size(slabinfo: &str, name: &str) -> Option<u64> {
    slabinfo.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()? == name).then(|| fields.nth(2)?.parse().ok())?
    })
}

/// `(f_type, f_bsize)` of the file system holding `dir`.
fn statfs(dir: &Path) -> Option<(i64, u64)> {
    let c = CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs fills the struct we own from a valid path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_type as i64, st.f_bsize as u64))
}

fn pwrite_all(fd: &OwnedFd, mut offset: u64, mut len: usize) -> io::Result<()> {
    while len > 0 {
        let n = len.min(BLOCK.len());
        // SAFETY: writing from a static buffer of at least n bytes.
        let written =
            unsafe { libc::pwrite(fd.as_raw_fd(), BLOCK.as_ptr().cast(), n, offset as i64) };
        if written < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        offset += written as u64;
        len -= written as usize;
    }
    Ok(())
}

impl Holding {
    fn map(&self, len: usize, fd: Option<&OwnedFd>) -> io::Result<*mut u8> {
        let (flags, raw) = match fd {
            Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
            ),
        };
        // SAFETY: a fresh mapping; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(ptr.cast())
    }

    fn fault_in(&self, ptr: *mut u8, len: usize) -> io::Result<()> {
        let advice = if self.args.thp {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: advice on our own mapping; failure only loses a hint.
        unsafe { libc::madvise(ptr.cast(), len, advice) };
        let mut populated = false;
        if self.args.fill == Fill::Populate {
            // SAFETY: as above. MADV_POPULATE_WRITE faults every page in, writable.
            populated = unsafe { libc::madvise(ptr.cast(), len, libc::MADV_POPULATE_WRITE) } == 0;
        }
        if !populated {
            let mut offset = 0;
            while offset < len {
                // SAFETY: offset < len, inside the writable mapping.
                unsafe { ptr::write_volatile(ptr.add(offset), 1) };
                offset += self.page;
            }
        }
        if self.args.mlock {
            // SAFETY: locking our own mapping.
            if unsafe { libc::mlock(ptr.cast(), len) } != 0 {
                let err = io::Error::last_os_error();
                return Err(io::Error::new(err.kind(), format!("mlock: {err}")));
            }
        }
        Ok(())
    }

    fn grow_by(&mut self, bytes: u64) -> io::Result<()> {
        let len = usize::try_from(bytes).map_err(io::Error::other)?;
        let chunk = match self.args.kind {
            Kind::Anon => {
                let ptr = self.map(len, None)?;
                let chunk = Chunk { ptr, len, fd: None };
                self.fault_in(ptr, len)?;
                chunk
            }
            Kind::Shmem => {
                // SAFETY: memfd_create with a static name.
                let raw = unsafe { libc::memfd_create(c"memstress".as_ptr(), libc::MFD_CLOEXEC) };
                if raw < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: a fresh fd.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                if self.args.unmapped {
                    pwrite_all(&fd, 0, len)?;
                    self.chunks.push(Chunk {
                        ptr: ptr::null_mut(),
                        len,
                        fd: Some(fd),
                    });
                    self.total += bytes;
                    return Ok(());
                }
                // SAFETY: sizing our own memfd.
                if unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                let ptr = self.map(len, Some(&fd))?;
                let chunk = Chunk {
                    ptr,
                    len,
                    fd: Some(fd),
                };
                self.fault_in(ptr, len)?;
                chunk
            }
            Kind::File => {
                let dir = self.args.file_dir.clone().unwrap_or_else(default_file_dir);
                let fd = anonymous_file(&dir)?;
                pwrite_all(&fd, 0, len)?;
                // Written back now, the pages are clean: like the read cache of a real app,
                // reclaimable without I/O (keep-dirty dirties them again).
                // SAFETY: fdatasync on our own fd.
                unsafe { libc::fdatasync(fd.as_raw_fd()) };
                Chunk {
                    ptr: ptr::null_mut(),
                    len,
                    fd: Some(fd),
                }
            }
        };
        self.chunks.push(chunk);
        self.total += bytes;
        Ok(())
    }

    fn shrink_to(&mut self, target: u64) {
        while self.total > target {
            let Some(last) = self.chunks.last_mut() else {
                break;
            };
            let excess = self.total - target;
            if excess as usize >= last.len {
                let chunk = self.chunks.pop().expect("checked above");
                self.total -= chunk.len as u64;
                drop(chunk);
            } else {
                let keep = last.len - excess as usize;
                if !last.ptr.is_null() {
                    // SAFETY: unmapping the page-aligned tail of a mapping we own (target and
                    // every chunk length are multiples of the page size).
                    unsafe { libc::munmap(last.ptr.add(keep).cast(), excess as usize) };
                }
                if let Some(fd) = &last.fd {
                    // SAFETY: truncating our own memfd or unnamed file frees its tail.
                    unsafe { libc::ftruncate(fd.as_raw_fd(), keep as i64) };
                }
                last.len = keep;
                self.total = target;
            }
        }
    }

    fn report(&self, out: &mut impl io::Write, done: Option<u64>) -> io::Result<()> {
        let payload = self.total;
        let charge = (self.measure)(&self.args, payload).unwrap_or(payload);
        let report = match done {
            Some(seq) => Report::Held {
                payload,
                charge,
                seq,
            },
            None => Report::Filling { payload, charge },
        };
        out.write_all(report.line().as_bytes())?;
        out.flush()
    }

    /// Grows or shrinks the payload to `target` bytes (rounded up to pages), reporting
    /// progress after each chunk.
    fn set(&mut self, target: u64, out: &mut impl io::Write) -> io::Result<()> {
        let page = self.page as u64;
        let target = target.div_ceil(page) * page;
        if target < self.total {
            self.shrink_to(target);
        }
        while self.total < target {
            let step = (target - self.total).min(CHUNK);
            self.grow_by(step)?;
            if self.total < target {
                self.report(out, None)?;
            }
        }
        Ok(())
    }

    /// Makes the whole process's charge `target` bytes: predicts what the payload costs
    /// beside itself (page tables: one 4 KiB page per 2 MiB mapped; the kernel memory that
    /// tracks shmem and page cache) so as not to overshoot, then corrects from what it
    /// measures. An overshoot at a cgroup's limit would be an OOM kill memstress caused by
    /// mistake; a transient one would show in the cgroup's peak.
    fn charge(&mut self, target: u64, out: &mut impl io::Write) -> io::Result<()> {
        let page = self.page as u64;
        // Bytes charged per page of payload beside the page itself.
        const PTE: u64 = 8;
        let beside = match self.args.kind {
            Kind::Anon => PTE,
            Kind::Shmem => PTE + self.args.kernel_per_page,
            Kind::File => self.args.kernel_per_page,
        };
        let measure = |h: &Self| (h.measure)(&h.args, h.total);
        let footprint = measure(self)?.saturating_sub(self.total + self.total / page * beside);
        let room = target.saturating_sub(footprint);
        // payload + payload / page × beside = room
        let predicted =
            (u128::from(room) * u128::from(page) / u128::from(page + beside)) as u64 / page * page;
        self.set(predicted, out)?;
        for _ in 0..3 {
            let charge = measure(self)?;
            let next = if charge > target {
                self.total
                    .saturating_sub((charge - target).div_ceil(page) * page)
            } else {
                self.total + (target - charge) / page * page
            };
            if next == self.total {
                break;
            }
            self.set(next, out)?;
        }
        Ok(())
    }

    fn apply(&mut self, command: Command, out: &mut impl io::Write) -> io::Result<bool> {
        let seq = match command {
            Command::Charge { bytes, seq } => {
                self.charge(bytes, out)?;
                seq
            }
            Command::Size { bytes, seq } => {
                self.set(bytes, out)?;
                seq
            }
            Command::Quit => return Ok(false),
        };
        self.report(out, Some(seq))?;
        Ok(true)
    }

    /// Keep-dirty: rewrites the next `pages` pages, cycling through everything held.
    fn rewrite(&mut self, pages: u64) {
        let page = self.page as u64;
        let total_pages = self.total / page;
        if total_pages == 0 {
            return;
        }
        for _ in 0..pages.min(total_pages) {
            let mut at = (self.cursor % total_pages) * page;
            self.cursor = self.cursor.wrapping_add(1);
            for chunk in &self.chunks {
                if at < chunk.len as u64 {
                    if chunk.ptr.is_null() {
                        if let Some(fd) = &chunk.fd {
                            let _ = pwrite_all(fd, at, 1);
                        }
                    } else {
                        // SAFETY: `at` is inside this chunk's writable mapping.
                        unsafe { ptr::write_volatile(chunk.ptr.add(at as usize), 2) };
                    }
                    break;
                }
                at -= chunk.len as u64;
            }
        }
    }
}

/// Sets the calling process's comm.
pub fn set_comm(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr(), 0, 0, 0) };
}

/// A worker started in a container's PID namespace was exec'd with its real group id set
/// apart from its effective one, so that exec left it non-dumpable (see
/// `spawn::drop_privileges`); with the process non-dumpable for good, the real group id goes
/// back to the effective one, which needs no privilege. Such an exec is a secure one, which
/// also cleared the parent-death signal: set again here (had the controller died meanwhile,
/// the worker reads end-of-file on its stdin and exits). Nothing to do otherwise.
pub fn settle_gid() -> io::Result<()> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresgid writes three gids we own.
    if unsafe { libc::getresgid(&mut r, &mut e, &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if r == e {
        return Ok(());
    }
    // SAFETY: setresgid to the effective gid and prctl without memory arguments; the worker
    // is single-threaded here.
    unsafe {
        if libc::setresgid(e, e, e) != 0
            || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Entry point of `memstress __stressor`: parses the flags by hand and runs the worker.
pub fn worker_entry(args: impl Iterator<Item = String>) -> i32 {
    match WorkerArgs::parse(args) {
        Ok(parsed) => worker_main(parsed),
        Err(e) => {
            eprintln!("memstress __stressor: {e}");
            2
        }
    }
}

/// Waits up to `timeout` (forever if `None`) for stdin to be readable.
fn wait_stdin(timeout: Option<Duration>) -> bool {
    let mut fds = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: poll on one pollfd we own.
    let n = unsafe { libc::poll(&mut fds, 1, ms) };
    n > 0
}

/// The worker's main loop. Returns the process exit code.
pub fn worker_main(args: WorkerArgs) -> i32 {
    set_comm(&args.name);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let initial = args.initial;
    let keep_dirty = args.pattern == Pattern::KeepDirty;
    let rewrite_every = args.rewrite_every;
    let mut holding = Holding {
        chunks: Vec::new(),
        total: 0,
        page,
        args,
        measure: measure_own,
        cursor: 0,
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let fail = |out: &mut io::StdoutLock<'_>, e: io::Error| {
        let _ = out.write_all(Report::Error(e.to_string()).line().as_bytes());
        let _ = out.flush();
        1
    };
    if let Some(command) = initial
        && let Err(e) = holding.apply(command, &mut out)
    {
        return fail(&mut out, e);
    }
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    let mut next_dirty = Instant::now() + DIRTY_TICK;
    loop {
        let timeout = keep_dirty.then(|| next_dirty.saturating_duration_since(Instant::now()));
        if wait_stdin(timeout) {
            // SAFETY: reading into a buffer we own.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The controller is gone.
                return 0;
            }
            pending.extend_from_slice(&buf[..n as usize]);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(command) = Command::parse(&line) else {
                    let _ = writeln!(out, "error unknown command `{}`", line.trim());
                    continue;
                };
                match holding.apply(command, &mut out) {
                    Ok(true) => {}
                    Ok(false) => return 0,
                    Err(e) => return fail(&mut out, e),
                }
            }
        }
        if keep_dirty && Instant::now() >= next_dirty {
            let pages = holding.total / page as u64;
            let per_tick = (pages * DIRTY_TICK.as_millis() as u64)
                .div_ceil(rewrite_every.as_millis().max(1) as u64);
            holding.rewrite(per_tick);
            next_dirty += DIRTY_TICK;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_round_trips() {
        for c in [
            Command::Charge { bytes: 42, seq: 3 },
            Command::Size { bytes: 7, seq: 0 },
            Command::Quit,
        ] {
            assert_eq!(Command::parse(&c.line()), Some(c));
        }
        assert_eq!(
            Command::parse("charge 5"),
            Some(Command::Charge { bytes: 5, seq: 0 })
        );
        assert_eq!(Command::parse("size x"), None);
        let held = Report::Held {
            payload: 4096,
            charge: 8192,
            seq: 9,
        };
        assert_eq!(Report::parse(&held.line()), Some(held));
        let filling = Report::Filling {
            payload: 1,
            charge: 2,
        };
        assert_eq!(Report::parse(&filling.line()), Some(filling));
        assert_eq!(
            Report::parse("error boom"),
            Some(Report::Error("boom".into()))
        );
        assert_eq!(Report::parse("what"), None);
        assert_eq!(Report::parse("held 1"), None);
        let a = WorkerArgs {
            kind: Kind::File,
            fill: Fill::Populate,
            pattern: Pattern::KeepDirty,
            rewrite_every: Duration::from_secs(2),
            thp: true,
            unmapped: true,
            file_dir: Some(PathBuf::from("/var/tmp")),
            initial: Some(Command::Charge { bytes: 123, seq: 0 }),
            ..WorkerArgs::default()
        };
        let back = WorkerArgs::parse(a.to_args().into_iter().skip(1)).unwrap();
        assert_eq!(back.initial, a.initial);
        assert_eq!(back.kind, Kind::File);
        assert_eq!(back.fill, Fill::Populate);
        assert_eq!(back.pattern, Pattern::KeepDirty);
        assert_eq!(back.rewrite_every, Duration::from_secs(2));
        assert_eq!(back.file_dir, a.file_dir);
        assert!(back.thp);
        assert!(back.unmapped);
        assert!(WorkerArgs::parse(["--bogus".to_owned()].into_iter()).is_err());
    }

    /// A process whose footprint is 300 KiB plus one page-table page per 2 MiB held.
    fn simulated(_args: &WorkerArgs, payload: u64) -> io::Result<u64> {
        Ok((300 << 10) + payload + payload.div_ceil(2 << 20) * 4096)
    }

    fn holding(kind: Kind) -> Holding {
        Holding {
            chunks: Vec::new(),
            total: 0,
            page: 4096,
            args: WorkerArgs {
                kind,
                file_dir: Some(std::env::temp_dir()),
                ..WorkerArgs::default()
            },
            measure: simulated,
            cursor: 0,
        }
    }

    #[test]
    fn holds_grows_and_shrinks_exactly() {
        for kind in [Kind::Anon, Kind::Shmem, Kind::File] {
            let mut h = holding(kind);
            let mut out = Vec::new();
            h.apply(
                Command::Size {
                    bytes: CHUNK + 5000,
                    seq: 1,
                },
                &mut out,
            )
            .unwrap();
            assert_eq!(h.total, CHUNK + 8192);
            assert_eq!(h.chunks.len(), 2);
            h.rewrite(10_000);
            h.apply(
                Command::Size {
                    bytes: 4096 * 3,
                    seq: 2,
                },
                &mut out,
            )
            .unwrap();
            assert_eq!(h.total, 4096 * 3);
            assert_eq!(h.chunks.len(), 1);
            if let Some(fd) = &h.chunks[0].fd {
                // SAFETY: fstat into a struct we own.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: as above.
                assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
                assert_eq!(st.st_size, 4096 * 3, "{kind:?} truncated to the kept size");
            }
            h.apply(Command::Size { bytes: 0, seq: 3 }, &mut out)
                .unwrap();
            assert_eq!(h.total, 0);
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with("filling 33554432 "), "{text}");
            assert!(text.contains("held 33562624 "), "{text}");
            assert!(
                text.lines().last().unwrap().starts_with("held 0 "),
                "{text}"
            );
            assert!(text.lines().last().unwrap().ends_with(" 3"), "{text}");
        }
    }

    /// `charge` lands within a page of its target without overshooting on the way (an
    /// overshoot at a cgroup's limit would be an OOM kill memstress caused by mistake). The
    /// real /proc/self/status accounting is checked against the kernel by the privileged
    /// test `size_is_the_total_charge_across_workers`.
    /// Asks `h` for a charge of `target` bytes; returns the reports it wrote.
    fn charge_to(h: &mut Holding, target: u64) -> Vec<u8> {
        let mut out = Vec::new();
        h.apply(
            Command::Charge {
                bytes: target,
                seq: 1,
            },
            &mut out,
        )
        .unwrap();
        out
    }

    /// Every report a stressor wrote on its way to `target` stays at or below it.
    fn assert_never_over(out: &[u8], target: u64) {
        for line in std::str::from_utf8(out).unwrap().lines() {
            let (Some(Report::Filling { charge, .. }) | Some(Report::Held { charge, .. })) =
                Report::parse(line)
            else {
                panic!("bad report {line}");
            };
            assert!(charge <= target, "overshot: {line} for {target}");
        }
    }

    #[test]
    fn charge_hits_its_target_from_below() {
        for target in [1 << 20, 50 << 20, (300 << 20) + 12345] {
            let mut h = holding(Kind::Anon);
            let out = charge_to(&mut h, target);
            let charge = simulated(&h.args, h.total).unwrap();
            assert!(
                charge <= target && target - charge < 4096,
                "{charge} vs {target}"
            );
            assert_never_over(&out, target);
        }
        // Page cache with the kernel memory that tracks it (121 bytes a page on ext4):
        // no overshoot on the way either.
        for target in [50 << 20, (192 << 20) + 4321] {
            let mut h = holding(Kind::File);
            h.args.kernel_per_page = 121;
            h.measure = |args, payload| Ok((300 << 10) + payload_charge(args, payload));
            let out = charge_to(&mut h, target);
            let charge = (300 << 10) + payload_charge(&h.args, h.total);
            assert!(
                charge <= target && target - charge < 8192,
                "{charge} vs {target}"
            );
            assert_never_over(&out, target);
        }
        // A target below the footprint holds nothing.
        let mut h = holding(Kind::Anon);
        h.charge(100 << 10, &mut io::sink()).unwrap();
        assert_eq!(h.total, 0);
    }

    /// Page cache on ext4 costs its cgroup a buffer head per block and tree nodes beside
    /// the pages; shmem only the tree nodes; anonymous memory nothing /proc does not show.
    #[test]
    fn counts_the_kernel_memory_that_tracks_pages() {
        let slabinfo = "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> …\nbuffer_head 1000 1170 104 39 1 : tunables\nradix_tree_node 10 14 584 14 2 : tunables\n";
        assert_eq!(slab_object_size(slabinfo, "buffer_head"), Some(104));
        assert_eq!(slab_object_size(slabinfo, "radix_tree_node"), Some(584));
        assert_eq!(slab_object_size(slabinfo, "buffer"), None);
        let here = std::env::temp_dir();
        assert_eq!(kernel_bytes_per_page(Kind::Anon, &here), 0);
        let shmem = kernel_bytes_per_page(Kind::Shmem, &here);
        assert!((5..20).contains(&shmem), "{shmem}");
        let file = kernel_bytes_per_page(Kind::File, &here);
        if statfs(&here).is_some_and(|(m, b)| m == 0xEF53 && b == 4096) {
            assert!((110..140).contains(&file), "ext4: {file}");
        }
        let args = WorkerArgs {
            kind: Kind::File,
            kernel_per_page: 121,
            ..WorkerArgs::default()
        };
        assert_eq!(payload_charge(&args, 4096 * 100), 4096 * 100 + 12_100);
    }

    #[test]
    fn reads_status_charge() {
        let status =
            "VmPTE:\t      48 kB\nRssAnon:\t     204 kB\nRssFile:\t3000 kB\nRssShmem:\t  4 kB\n";
        // RssShmem is not counted here: shmem payload is accounted explicitly by the worker.
        assert_eq!(
            charge_from_status(status),
            (204 + 48) * 1024 + KERNEL_OVERHEAD
        );
    }
}
