//! The BPF objects a process holds, and whether they still exist: to prove that nothing of
//! memstress's outlives it (programs, links and maps are never pinned, so they go with the
//! last file descriptor).

use std::{collections::BTreeSet, fs};

/// The ids of the BPF programs, links and maps `pid` holds file descriptors to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Program ids.
    pub programs: BTreeSet<u32>,
    /// Link ids.
    pub links: BTreeSet<u32>,
    /// Map ids.
    pub maps: BTreeSet<u32>,
}

impl Held {
    /// Reads `/proc/<pid>/fdinfo/*`.
    pub fn by(pid: u32) -> Self {
        let mut held = Self::default();
        let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
            return held;
        };
        for entry in dir.flatten() {
            let Ok(info) = fs::read_to_string(entry.path()) else {
                continue;
            };
            let field = |key: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<u32>().ok())
            };
            if let Some(id) = field("link_id:") {
                held.links.insert(id);
            } else if let Some(id) = field("prog_id:") {
                held.programs.insert(id);
            } else if let Some(id) = field("map_id:") {
                held.maps.insert(id);
            }
        }
        held
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.programs.is_empty() && self.links.is_empty() && self.maps.is_empty()
    }

    /// The ones the kernel still has.
    pub fn still_loaded(&self) -> Self {
        Self {
            programs: self
                .programs
                .iter()
                .copied()
                .filter(|&id| exists(BPF_PROG_GET_FD_BY_ID, id))
                .collect(),
            links: self
                .links
                .iter()
                .copied()
                .filter(|&id| exists(BPF_LINK_GET_FD_BY_ID, id))
                .collect(),
            maps: self
                .maps
                .iter()
                .copied()
                .filter(|&id| exists(BPF_MAP_GET_FD_BY_ID, id))
                .collect(),
        }
    }
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

/// Whether object `id` exists: `BPF_*_GET_FD_BY_ID` fails with ENOENT once it is gone.
fn exists(cmd: libc::c_long, id: u32) -> bool {
    // union bpf_attr for the GET_FD_BY_ID commands: the id first, then flags.
    let attr = [id, 0u32, 0, 0];
    // SAFETY: bpf(2) reads `size` bytes of the attr we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd >= 0 {
        // SAFETY: a fresh fd we own.
        unsafe { libc::close(fd as i32) };
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
}
