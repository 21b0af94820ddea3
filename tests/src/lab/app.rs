//! An application that is busy with its memory, for scenarios whose pressure needs one
//! (`memstress-lab app`): it holds anonymous memory as `memstress __stressor` does, answering
//! the same liveness protocol, and re-reads a file working set in a loop, the way a database
//! or a cache server re-reads its data.
//!
//! ```text
//! memstress-lab app --name NAME --size BYTES --reread BYTES --dir DIR [--threads N]
//!                   [--block BYTES] [--mmap 0|1] [--work N] [--skew K]
//! ```
//!
//! stdin: `size <bytes> <seq>` (hold this much anonymous memory) or `quit`; stdout: `held
//! <bytes> <bytes> <seq>` once done. The file (unnamed, in DIR: on a disk, so that its pages
//! are page cache and not shmem) is written once, then read by `--threads` threads at random
//! offsets: a `--block` per `read(2)` (`POSIX_FADV_RANDOM`: no readahead), or with `--mmap 1`
//! a page at a time through a mapping (`MADV_RANDOM`), where a hit is a load and a miss a page
//! fault; after each read, `--work` rounds of work. `--skew K` puts the read at `size · u^K`
//! for `u` uniform in [0, 1): 1 spreads the reads evenly, 2 puts half of them in the file's
//! first quarter (a hot head and a cold tail, as most data is read). While its page cache fits
//! beside everything else in the cgroup every read is a hit and nothing stalls. Squeezed below
//! the file's size, reads refault: the kernel counts the reclaim that makes room for a refault
//! (`try_charge_memcg()`) as memory stall, and the wait for a refault of its working set
//! (`filemap_read_folio()` of a folio with `PG_workingset`) too, which is what
//! `memory.pressure` reports. The work is what the app does between reads: the more of it, the
//! smaller the share of its time a refault costs.
//!
//! How much a refault costs is the kernel's LRU's doing (measured under qemu, a 96 MiB file in
//! a 192 MiB pod, two threads through a mapping, with the lab's readings of memory.stat):
//! - The multi-gen LRU (6.12's default) keeps a file larger than its room in the oldest
//!   generation: its refaults are not workingset (`workingset_restore_file` stays 0), reclaim
//!   frees about every page it scans, and the stall is that reclaim alone. Pressure then
//!   follows the refault rate: 2 000 rounds of work climb 3 → 20 % from 95 to 122-127 MiB
//!   held (`--skew 2`); 15 000 rounds top out at 9-14 % with the stressors at their cap. In some runs the
//!   app's pages are protected instead, refaults are workingset, and the same squeeze gives
//!   several times the pressure.
//! - The classic LRU (6.1) finds every resident page referenced between two scans when reads
//!   are this fast: reclaim scans 5-15 pages per page it frees, refaults are workingset, and
//!   pressure jumps to 20-40 % within 2 MiB once the file stops fitting. With a hot head
//!   (`--skew 2`, 2 000 rounds) the lab's loop held 20 % within 2.1-3.9 points (4 runs of
//!   4); with reads spread evenly it swung past 5 points in 1 run of 3.
//! - `read(2)` instead of a mapping: one thread stays under 10 % however hard the squeeze (the
//!   system call costs as much as a refault).

use std::{
    ffi::CString,
    io::{self, BufRead as _, Write as _},
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

const PAGE: usize = 4096;
const CHUNK: usize = 1 << 20;

/// What `memstress-lab app` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppArgs {
    /// Its comm.
    pub name: String,
    /// Anonymous memory to hold from the start.
    pub size: u64,
    /// Size of the file it re-reads.
    pub reread: u64,
    /// Where the file goes.
    pub dir: PathBuf,
    /// Threads reading it.
    pub threads: u32,
    /// Bytes per read (a multiple of the page).
    pub block: u64,
    /// Read it through a mapping instead of `read(2)`, a page at a time.
    pub mmap: bool,
    /// Rounds of work (a xorshift step) after each read.
    pub work: u32,
    /// How the reads spread over the file: at `size · u^skew` for `u` uniform in [0, 1), so
    /// 1 is uniform and 2 reads the first quarter half of the time (a hot head, a cold tail).
    pub skew: u32,
}

impl AppArgs {
    /// The arguments that start it (after the executable).
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "app".into(),
            "--name".into(),
            self.name.clone(),
            "--size".into(),
            self.size.to_string(),
            "--reread".into(),
            self.reread.to_string(),
            "--dir".into(),
            self.dir.display().to_string(),
            "--threads".into(),
            self.threads.to_string(),
            "--block".into(),
            self.block.to_string(),
            "--work".into(),
            self.work.to_string(),
            "--mmap".into(),
            u8::from(self.mmap).to_string(),
            "--skew".into(),
            self.skew.to_string(),
        ]
    }

    /// Parses what [`Self::to_args`] wrote (after `app`).
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut parsed = Self {
            name: "app".into(),
            size: 0,
            reread: 0,
            dir: PathBuf::from("/var/tmp"),
            threads: 1,
            block: PAGE as u64,
            mmap: false,
            work: 0,
            skew: 1,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            let number = || value.parse::<u64>().map_err(|_| format!("{flag} {value}"));
            match flag.as_str() {
                "--name" => parsed.name = value.clone(),
                "--size" => parsed.size = number()?,
                "--reread" => parsed.reread = number()?,
                "--dir" => parsed.dir = PathBuf::from(value),
                "--work" => {
                    parsed.work = u32::try_from(number()?).map_err(|_| format!("--work {value}"))?
                }
                "--mmap" => parsed.mmap = value == "1",
                "--skew" => {
                    parsed.skew = u32::try_from(number()?)
                        .ok()
                        .filter(|n| (1..=8).contains(n))
                        .ok_or(format!("--skew {value}: 1 to 8"))?
                }
                "--threads" => {
                    parsed.threads = u32::try_from(number()?)
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or(format!("--threads {value}: 1 to 64"))?
                }
                "--block" => {
                    parsed.block = number()?
                        .div_ceil(PAGE as u64)
                        .clamp(1, 256)
                        .saturating_mul(PAGE as u64)
                }
                other => return Err(format!("unknown flag {other}")),
            }
        }
        Ok(parsed)
    }
}

/// Sets the calling thread's comm (threads made afterwards inherit it).
fn set_comm(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr(), 0, 0, 0) };
}

/// An unnamed file of `bytes` in `dir`, written and synced (clean page cache, as a read
/// cache is), with readahead off.
fn working_set(dir: &Path, bytes: u64) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd as _;
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: open(2) with a valid path; the fd is owned by the File below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_TMPFILE | libc::O_RDWR, 0o600) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let block = vec![7u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.sync_data()?;
    // SAFETY: advice on our own fd; failing only loses a hint.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    Ok(file)
}

/// The next of a xorshift64 sequence: uniform enough over the file's blocks, and cheap work.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Reads random blocks of `file` until `stop`: with `read(2)`, or through a mapping of it
/// (`mmap`: a hit costs a load, a miss a page fault), `work` rounds of work after each.
fn reread(file: &std::fs::File, args: &AppArgs, seed: u64, stop: &AtomicBool) {
    use std::os::unix::fs::FileExt as _;
    let bytes = args.reread;
    let block = if args.mmap { PAGE as u64 } else { args.block };
    let blocks = (bytes / block).max(1);
    let mut buf = vec![0u8; block as usize];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed;
    let map = if args.mmap {
        // SAFETY: a fresh shared read-only mapping of our own file; the kernel picks the
        // address; it lives until this function returns.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            eprintln!("memstress-lab app: mmap: {}", io::Error::last_os_error());
            return;
        }
        // SAFETY: advice on our own mapping; failing only loses a hint.
        unsafe { libc::madvise(ptr, bytes as usize, libc::MADV_RANDOM) };
        Some(ptr.cast::<u8>())
    } else {
        None
    };
    let mut sum = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let at = if args.skew <= 1 {
            next(&mut x) % blocks
        } else {
            let u = (next(&mut x) >> 11) as f64 / (1u64 << 53) as f64;
            ((u.powi(args.skew as i32) * blocks as f64) as u64).min(blocks - 1)
        } * block;
        match map {
            Some(ptr) => {
                // SAFETY: `at` is a page inside the mapping.
                sum ^= u64::from(unsafe { std::ptr::read_volatile(ptr.add(at as usize)) });
            }
            None => {
                if file.read_exact_at(&mut buf, at).is_err() {
                    thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                sum ^= u64::from(buf[0]);
            }
        }
        for _ in 0..args.work {
            sum = sum.wrapping_add(next(&mut x));
        }
        std::hint::black_box(sum);
    }
    if let Some(ptr) = map {
        // SAFETY: unmapping the mapping made above, no longer used.
        unsafe { libc::munmap(ptr.cast(), bytes as usize) };
    }
}

/// Anonymous memory in 1 MiB chunks, every page written.
fn resize(held: &mut Vec<Vec<u8>>, bytes: u64) {
    let want = bytes.div_ceil(CHUNK as u64) as usize;
    held.truncate(want);
    while held.len() < want {
        held.push(vec![1u8; CHUNK]);
    }
}

/// `memstress-lab app`: returns the exit code.
pub fn main(args: &AppArgs) -> i32 {
    set_comm(&args.name);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = (args.reread > 0).then(|| {
        let (args, stop) = (args.clone(), stop.clone());
        thread::spawn(move || {
            let file = match working_set(&args.dir, args.reread) {
                Ok(file) => Arc::new(file),
                Err(e) => {
                    eprintln!("memstress-lab app: {}: {e}", args.dir.display());
                    return;
                }
            };
            let readers: Vec<_> = (0..args.threads)
                .map(|i| {
                    let (file, stop) = (file.clone(), stop.clone());
                    let seed = u64::from(std::process::id()) << 8 | u64::from(i);
                    let args = args.clone();
                    thread::spawn(move || reread(&file, &args, seed, &stop))
                })
                .collect();
            for r in readers {
                let _ = r.join();
            }
        })
    });
    let mut held = Vec::new();
    resize(&mut held, args.size);
    let answer = |bytes: u64, seq: u64| {
        let mut out = io::stdout().lock();
        writeln!(out, "held {bytes} {bytes} {seq}").and_then(|()| out.flush())
    };
    let mut code = i32::from(answer(args.size, 0).is_err());
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["size", bytes, seq] => {
                let (Ok(bytes), Ok(seq)) = (bytes.parse::<u64>(), seq.parse::<u64>()) else {
                    continue;
                };
                resize(&mut held, bytes);
                if answer(bytes, seq).is_err() {
                    code = 1;
                    break;
                }
            }
            ["quit"] => break,
            _ => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_arguments_round_trip() {
        let args = AppArgs {
            name: "db".into(),
            size: 16 << 20,
            reread: 96 << 20,
            dir: PathBuf::from("/mnt/cache"),
            threads: 2,
            block: 64 << 10,
            mmap: true,
            work: 3,
            skew: 3,
        };
        let written = args.to_args();
        assert_eq!(written[0], "app");
        assert_eq!(AppArgs::parse(&written[1..]), Ok(args));
        assert!(AppArgs::parse(&["--size".into()]).is_err());
        assert!(AppArgs::parse(&["--bogus".into(), "1".into()]).is_err());
    }
}
