//! Finding tracefs and reading tracepoint record formats.
//!
//! Classic tracepoint records differ between kernels (fields are added, reordered, resized),
//! so memstress never assumes a layout: it reads `events/<group>/<event>/format` at start-up
//! and hands the offsets to its BPF programs.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

/// Where tracefs is normally mounted, newest convention first.
pub const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Errors about tracefs.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted (memstress needs it for the oom:mark_victim tracepoint); \
         mount it with: mount -t tracefs nodev /sys/kernel/tracing"
    )]
    NotMounted,
    #[error(
        "cannot read tracefs at {0}: permission denied; a non-root user needs \
         CAP_DAC_READ_SEARCH as well, or run memstress as uid 0 with CAP_BPF and CAP_PERFMON"
    )]
    Denied(String),
    #[error("this kernel has no tracepoint {0} (looked in {1})")]
    NoEvent(String, String),
    #[error("cannot read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot parse the format of {event}")]
    Parse { event: String, source: FormatError },
}

/// What is wrong with a tracepoint's format file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("bad ID line `{0}`")]
    Id(String),
    #[error("field without a declaration: `{0}`")]
    NoDeclaration(String),
    #[error("field without offset or size: `{0}`")]
    NoPlace(String),
    #[error("field without a name: `{0}`")]
    NoName(String),
    #[error("no fields")]
    NoFields,
}

/// A mounted tracefs.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

/// One field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Byte offset in the record.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// Whether the field is signed.
    pub signed: bool,
    /// Whether it is a `__data_loc` (dynamic) field.
    pub data_loc: bool,
}

/// A tracepoint record format: field name -> field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Format {
    /// The event's id.
    pub id: Option<u32>,
    /// Fields by name (common fields included).
    pub fields: HashMap<String, Field>,
}

impl Format {
    /// Parses the text of an `events/<group>/<event>/format` file.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let mut format = Self::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(id) = line.strip_prefix("ID:") {
                format.id = Some(
                    id.trim()
                        .parse()
                        .map_err(|_| FormatError::Id(line.to_owned()))?,
                );
                continue;
            }
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            let mut signed = false;
            for part in rest.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse::<u32>().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse::<u32>().ok();
                } else if let Some(v) = part.strip_prefix("signed:") {
                    signed = v == "1";
                } else if decl.is_none() {
                    decl = Some(part);
                }
            }
            let decl = decl.ok_or_else(|| FormatError::NoDeclaration(line.to_owned()))?;
            let (offset, size) = offset
                .zip(size)
                .ok_or_else(|| FormatError::NoPlace(line.to_owned()))?;
            // The name is the last identifier of the declaration, before any `[N]`.
            let name = decl
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .map(|n| n.split('[').next().unwrap_or(n))
                .filter(|n| !n.is_empty())
                .ok_or_else(|| FormatError::NoName(line.to_owned()))?;
            format.fields.insert(
                name.to_owned(),
                Field {
                    offset,
                    size,
                    signed,
                    data_loc: decl.starts_with("__data_loc"),
                },
            );
        }
        if format.fields.is_empty() {
            return Err(FormatError::NoFields);
        }
        Ok(format)
    }

    /// The field `name`, if the record has it.
    pub fn field(&self, name: &str) -> Option<Field> {
        self.fields.get(name).copied()
    }
}

impl Tracefs {
    /// Finds a mounted tracefs in the usual places.
    pub fn find() -> Result<Self, TracefsError> {
        let mut denied = None;
        for root in CANDIDATES.iter().map(Path::new) {
            match std::fs::metadata(root.join("events")) {
                Ok(m) if m.is_dir() => {
                    return Ok(Self {
                        root: root.to_owned(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    denied.get_or_insert_with(|| root.display().to_string());
                }
                _ => {}
            }
        }
        Err(denied.map_or(TracefsError::NotMounted, TracefsError::Denied))
    }

    /// A tracefs at `root` (tests).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Where it is mounted.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the kernel has tracepoint `group:event`.
    pub fn has_event(&self, group: &str, event: &str) -> bool {
        self.root.join("events").join(group).join(event).is_dir()
    }

    /// The record format of `group:event`.
    pub fn format(&self, group: &str, event: &str) -> Result<Format, TracefsError> {
        let dir = self.root.join("events").join(group).join(event);
        if !dir.is_dir() {
            return Err(TracefsError::NoEvent(
                format!("{group}:{event}"),
                dir.display().to_string(),
            ));
        }
        let path = dir.join("format");
        let text = fs::read_to_string(&path).map_err(|source| TracefsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Format::parse(&text).map_err(|source| TracefsError::Parse {
            event: format!("{group}:{event}"),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `oom:mark_victim` as Linux 6.18 prints it.
    const MARK_VICTIM_6_18: &str = "name: mark_victim
ID: 609
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long file_rss;\toffset:32;\tsize:8;\tsigned:0;
\tfield:unsigned long shmem_rss;\toffset:40;\tsize:8;\tsigned:0;
\tfield:uid_t uid;\toffset:48;\tsize:4;\tsigned:0;
\tfield:unsigned long pgtables;\toffset:56;\tsize:8;\tsigned:0;
\tfield:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;

print fmt: \"pid=%d comm=%s\", REC->pid, __get_str(comm)
";

    /// `oom:mark_victim` before 6.8: only the pid.
    const MARK_VICTIM_6_1: &str = "name: mark_victim
ID: 512
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;

print fmt: \"pid=%d\", REC->pid
";

    #[test]
    fn parses_mark_victim_formats() {
        let f = Format::parse(MARK_VICTIM_6_18).unwrap();
        assert_eq!(f.id, Some(609));
        assert_eq!(
            f.field("oom_score_adj"),
            Some(Field {
                offset: 64,
                size: 2,
                signed: true,
                data_loc: false
            })
        );
        assert!(f.field("comm").unwrap().data_loc);
        assert_eq!(f.field("anon_rss").unwrap().offset, 24);
        let old = Format::parse(MARK_VICTIM_6_1).unwrap();
        assert_eq!(old.field("pid").unwrap().offset, 8);
        assert_eq!(old.field("anon_rss"), None);
    }

    #[test]
    fn parses_arrays_and_pointers() {
        let f = Format::parse(
            "\tfield:char comm[16];\toffset:20;\tsize:16;\tsigned:0;\n\
             \tfield:const char * name;\toffset:40;\tsize:8;\tsigned:0;\n",
        )
        .unwrap();
        assert_eq!(f.field("comm").unwrap().size, 16);
        assert_eq!(f.field("name").unwrap().offset, 40);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Format::parse("").is_err());
        assert!(Format::parse("field:int x;\toffset:zz;\tsize:4;").is_err());
        assert!(Format::parse("field:;offset:1;size:1;").is_err());
    }
}
