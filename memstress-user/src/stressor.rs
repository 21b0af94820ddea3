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
    fs,
    io::{self, BufRead as _, Write as _},
    ptr,
};

/// Largest mapping added per step; a `held` report follows each.
pub const CHUNK: u64 = 32 << 20;

/// Kernel memory charged per process that /proc/self/status does not show: the kernel stack
/// (THREAD_SIZE, 16 KiB on x86-64) and the accounted slab objects of a task (task_struct,
/// mm_struct, VMAs, files, signal: ~8 KiB).
pub const KERNEL_OVERHEAD: u64 = 24 << 10;

/// How pages are faulted in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Fill {
    /// Write one byte per page.
    #[default]
    Touch,
    /// `MADV_POPULATE_WRITE` (Linux 5.14): the kernel faults the range in one call.
    Populate,
}

/// Worker options.
#[derive(Clone, Debug)]
pub struct WorkerArgs {
    /// Name shown as the process's comm (at most 15 bytes).
    pub name: String,
    /// How pages are faulted in.
    pub fill: Fill,
    /// Ask for transparent huge pages (`MADV_HUGEPAGE`).
    pub thp: bool,
    /// Lock the memory (`mlock`), so it is never reclaimed or swapped.
    pub mlock: bool,
    /// What to hold from the start, before any command arrives.
    pub initial: Option<Command>,
}

impl WorkerArgs {
    /// The command line that starts a worker with these options (after the executable).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "__stressor".to_owned(),
            "--name".to_owned(),
            self.name.clone(),
        ];
        if self.fill == Fill::Populate {
            args.extend(["--fill".to_owned(), "populate".to_owned()]);
        }
        if self.thp {
            args.push("--thp".to_owned());
        }
        if self.mlock {
            args.push("--mlock".to_owned());
        }
        match self.initial {
            Some(Command::Charge(b)) => args.extend(["--charge".to_owned(), b.to_string()]),
            Some(Command::Size(b)) => args.extend(["--size".to_owned(), b.to_string()]),
            _ => {}
        }
        args
    }

    /// Parses the flags written by [`Self::to_args`] (after `__stressor`).
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut parsed = Self {
            name: "memstress-vm".to_owned(),
            fill: Fill::Touch,
            thp: false,
            mlock: false,
            initial: None,
        };
        let bytes = |v: Option<String>| v.and_then(|v| v.parse::<u64>().ok());
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "--name" => parsed.name = args.next().ok_or("--name needs a value")?,
                "--fill" => {
                    parsed.fill = match args.next().as_deref() {
                        Some("touch") => Fill::Touch,
                        Some("populate") => Fill::Populate,
                        _ => return Err("--fill takes touch or populate".to_owned()),
                    }
                }
                "--thp" => parsed.thp = true,
                "--mlock" => parsed.mlock = true,
                "--charge" => {
                    parsed.initial = Some(Command::Charge(
                        bytes(args.next()).ok_or("--charge needs bytes")?,
                    ));
                }
                "--size" => {
                    parsed.initial = Some(Command::Size(
                        bytes(args.next()).ok_or("--size needs bytes")?,
                    ));
                }
                other => return Err(format!("unknown flag `{other}`")),
            }
        }
        Ok(parsed)
    }
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
    /// Done: holding `payload` bytes; the whole process costs its cgroup `charge` bytes.
    Held {
        /// Bytes of memory held for the stress.
        payload: u64,
        /// The process's estimated charge: payload plus its own footprint.
        charge: u64,
    },
    /// Failed; exiting.
    Error(String),
}

impl Report {
    /// The line to send.
    pub fn line(&self) -> String {
        match self {
            Self::Filling { payload, charge } => format!("filling {payload} {charge}\n"),
            Self::Held { payload, charge } => format!("held {payload} {charge}\n"),
            Self::Error(e) => format!("error {e}\n"),
        }
    }

    /// Parses one line.
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim();
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let numbers = || -> Option<(u64, u64)> {
            let mut nums = rest.split_whitespace().map(str::parse::<u64>);
            let payload = nums.next()?.ok()?;
            let charge = nums.next().unwrap_or(Ok(payload)).ok()?;
            Some((payload, charge))
        };
        match word {
            "held" => numbers().map(|(payload, charge)| Self::Held { payload, charge }),
            "filling" => numbers().map(|(payload, charge)| Self::Filling { payload, charge }),
            "error" => Some(Self::Error(rest.to_owned())),
            _ => None,
        }
    }
}

/// A controller→worker command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Make the whole process's charge this many bytes.
    Charge(u64),
    /// Hold exactly this payload.
    Size(u64),
    /// Exit.
    Quit,
}

impl Command {
    /// The line to send.
    pub fn line(&self) -> String {
        match self {
            Self::Charge(bytes) => format!("charge {bytes}\n"),
            Self::Size(bytes) => format!("size {bytes}\n"),
            Self::Quit => "quit\n".to_owned(),
        }
    }

    /// Parses one line.
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim();
        if line == "quit" {
            return Some(Self::Quit);
        }
        let (word, n) = line.split_once(' ')?;
        let n = n.trim().parse().ok()?;
        match word {
            "charge" => Some(Self::Charge(n)),
            "size" => Some(Self::Size(n)),
            _ => None,
        }
    }
}

/// This process's footprint as its cgroup is charged for it, from /proc/self/status:
/// anonymous and shmem RSS, page tables, plus [`KERNEL_OVERHEAD`].
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
    kib("RssAnon:") + kib("RssShmem:") + kib("VmPTE:") + KERNEL_OVERHEAD
}

struct Chunk {
    ptr: *mut u8,
    len: usize,
}

/// The memory a worker holds.
struct Holding {
    chunks: Vec<Chunk>,
    total: u64,
    page: usize,
    args: WorkerArgs,
    /// This process's charge, given the payload held ([`own_charge`] outside tests).
    measure: fn(u64) -> io::Result<u64>,
}

fn measure_own(_payload: u64) -> io::Result<u64> {
    own_charge()
}

impl Holding {
    fn grow_by(&mut self, bytes: u64) -> io::Result<()> {
        let len = usize::try_from(bytes).map_err(io::Error::other)?;
        // SAFETY: a fresh private anonymous mapping; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = ptr.cast::<u8>();
        let advice = if self.args.thp {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: advice on the mapping we just made; failure only loses a hint.
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
                // SAFETY: unmapping what we mapped; the chunk is not recorded yet.
                unsafe { libc::munmap(ptr.cast(), len) };
                return Err(io::Error::new(err.kind(), format!("mlock: {err}")));
            }
        }
        self.chunks.push(Chunk { ptr, len });
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
                // SAFETY: unmapping a whole chunk this worker mapped.
                unsafe { libc::munmap(chunk.ptr.cast(), chunk.len) };
                self.total -= chunk.len as u64;
            } else {
                let keep = last.len - excess as usize;
                // SAFETY: unmapping the page-aligned tail of a chunk we mapped (target and
                // every chunk length are multiples of the page size).
                unsafe { libc::munmap(last.ptr.add(keep).cast(), excess as usize) };
                last.len = keep;
                self.total = target;
            }
        }
    }

    fn report(&self, out: &mut impl io::Write, done: bool) -> io::Result<()> {
        let payload = self.total;
        let charge = (self.measure)(payload).unwrap_or(payload);
        let report = if done {
            Report::Held { payload, charge }
        } else {
            Report::Filling { payload, charge }
        };
        out.write_all(report.line().as_bytes())?;
        out.flush()
    }

    /// Grows or shrinks the payload to `target` bytes (rounded up to pages), reporting
    /// progress after each chunk and, if `done`, completion at the end.
    fn set(&mut self, target: u64, out: &mut impl io::Write, done: bool) -> io::Result<()> {
        let page = self.page as u64;
        let target = target.div_ceil(page) * page;
        if target < self.total {
            self.shrink_to(target);
        }
        while self.total < target {
            let step = (target - self.total).min(CHUNK);
            self.grow_by(step)?;
            if self.total < target {
                self.report(out, false)?;
            }
        }
        if done {
            self.report(out, true)?;
        }
        Ok(())
    }

    /// Makes the whole process's charge `target` bytes: predicts the page tables the payload
    /// needs (one 4 KiB page per 2 MiB mapped) so as not to overshoot, then corrects from
    /// what /proc/self/status says.
    fn charge(&mut self, target: u64, out: &mut impl io::Write) -> io::Result<()> {
        let page = self.page as u64;
        let footprint = (self.measure)(self.total)?.saturating_sub(self.total);
        let room = target.saturating_sub(footprint);
        // payload + payload/512 (page tables) = room
        let predicted = (room * 512 / 513) / page * page;
        self.set(predicted, out, false)?;
        for _ in 0..3 {
            let charge = (self.measure)(self.total)?;
            let next = if charge > target {
                self.total
                    .saturating_sub((charge - target).div_ceil(page) * page)
            } else {
                self.total + (target - charge) / page * page
            };
            if next == self.total {
                break;
            }
            self.set(next, out, false)?;
        }
        self.report(out, true)
    }

    fn apply(&mut self, command: Command, out: &mut impl io::Write) -> io::Result<bool> {
        match command {
            Command::Charge(bytes) => self.charge(bytes, out)?,
            Command::Size(bytes) => self.set(bytes, out, true)?,
            Command::Quit => return Ok(false),
        }
        Ok(true)
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

/// The worker's main loop. Returns the process exit code.
pub fn worker_main(args: WorkerArgs) -> i32 {
    set_comm(&args.name);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let initial = args.initial;
    let mut holding = Holding {
        chunks: Vec::new(),
        total: 0,
        page,
        args,
        measure: measure_own,
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
    let stdin = io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let Some(command) = Command::parse(&line) else {
            let _ = writeln!(out, "error unknown command `{line}`");
            continue;
        };
        match holding.apply(command, &mut out) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return fail(&mut out, e),
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> WorkerArgs {
        WorkerArgs {
            name: "t".into(),
            fill: Fill::Touch,
            thp: false,
            mlock: false,
            initial: None,
        }
    }

    #[test]
    fn protocol_round_trips() {
        for c in [Command::Charge(42), Command::Size(7), Command::Quit] {
            assert_eq!(Command::parse(&c.line()), Some(c));
        }
        assert_eq!(Command::parse("size x"), None);
        let held = Report::Held {
            payload: 4096,
            charge: 8192,
        };
        assert_eq!(Report::parse(&held.line()), Some(held));
        assert_eq!(
            Report::parse("held 4096"),
            Some(Report::Held {
                payload: 4096,
                charge: 4096
            })
        );
        assert_eq!(
            Report::parse("error boom"),
            Some(Report::Error("boom".into()))
        );
        assert_eq!(Report::parse("what"), None);
        let mut a = args();
        a.fill = Fill::Populate;
        a.thp = true;
        a.initial = Some(Command::Charge(123));
        let back = WorkerArgs::parse(a.to_args().into_iter().skip(1)).unwrap();
        assert_eq!(back.initial, Some(Command::Charge(123)));
        assert_eq!(back.fill, Fill::Populate);
        assert!(back.thp);
        assert!(WorkerArgs::parse(["--bogus".to_owned()].into_iter()).is_err());
    }

    /// A process whose footprint is 300 KiB plus one page-table page per 2 MiB held.
    fn simulated(payload: u64) -> io::Result<u64> {
        Ok((300 << 10) + payload + payload.div_ceil(2 << 20) * 4096)
    }

    fn holding(measure: fn(u64) -> io::Result<u64>) -> Holding {
        Holding {
            chunks: Vec::new(),
            total: 0,
            page: 4096,
            args: args(),
            measure,
        }
    }

    #[test]
    fn holds_grows_and_shrinks_exactly() {
        let mut h = holding(simulated);
        let mut out = Vec::new();
        h.set(CHUNK + 5000, &mut out, true).unwrap();
        assert_eq!(h.total, CHUNK + 8192);
        assert_eq!(h.chunks.len(), 2);
        h.set(4096 * 3, &mut out, true).unwrap();
        assert_eq!(h.total, 4096 * 3);
        assert_eq!(h.chunks.len(), 1);
        h.set(0, &mut out, true).unwrap();
        assert_eq!(h.total, 0);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.lines().last().unwrap().starts_with("held 0 "),
            "{text}"
        );
        assert!(text.starts_with("filling 33554432 "), "{text}");
    }

    /// `charge` lands within a page of its target without overshooting on the way (an
    /// overshoot at a cgroup's limit would be an OOM kill memstress caused by mistake). The
    /// real /proc/self/status accounting is checked against the kernel by the privileged
    /// test `size_is_the_total_charge_across_workers`.
    #[test]
    fn charge_hits_its_target_from_below() {
        for target in [1 << 20, 50 << 20, (300 << 20) + 12345] {
            let mut h = holding(simulated);
            let mut out = Vec::new();
            h.charge(target, &mut out).unwrap();
            let charge = simulated(h.total).unwrap();
            assert!(
                charge <= target && target - charge < 4096,
                "{charge} vs {target}"
            );
            for line in String::from_utf8(out).unwrap().lines() {
                let (Some(Report::Filling { charge, .. }) | Some(Report::Held { charge, .. })) =
                    Report::parse(line)
                else {
                    panic!("bad report {line}");
                };
                assert!(charge <= target, "overshot: {line} for {target}");
            }
        }
        // A target below the footprint holds nothing.
        let mut h = holding(simulated);
        h.charge(100 << 10, &mut io::sink()).unwrap();
        assert_eq!(h.total, 0);
    }

    #[test]
    fn reads_status_charge() {
        let status =
            "VmPTE:\t      48 kB\nRssAnon:\t     204 kB\nRssFile:\t3000 kB\nRssShmem:\t  0 kB\n";
        assert_eq!(
            charge_from_status(status),
            (204 + 48) * 1024 + KERNEL_OVERHEAD
        );
    }
}
