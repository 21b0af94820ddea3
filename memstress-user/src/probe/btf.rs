//! A small reader for the kernel's BPF Type Format (`/sys/kernel/btf/vmlinux`).
//!
//! memstress's BPF programs are written in Rust and get no CO-RE relocations, so userspace
//! resolves every struct member offset the programs need from the running kernel's BTF at
//! start-up. This module parses just enough of BTF to do that: types, names, struct and union
//! members (including members of anonymous nested structs and unions, as in `mm_struct`),
//! arrays, enums and function prototypes. Every read is bounds-checked, so a truncated or
//! hostile file yields a [`BtfError`], never a panic (the parser is fuzzed).

use std::{fs, path::Path};

/// The kernel's own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;

/// Errors while reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF data (bad magic {0:#06x})")]
    Magic(u16),
    #[error("BTF is truncated or corrupt: {0}")]
    Corrupt(&'static str),
    #[error("BTF has no {kind} named `{name}`")]
    NoType { kind: &'static str, name: String },
    #[error("`{ty}` has no member `{member}` in this kernel")]
    NoMember { ty: String, member: String },
    #[error("BTF type `{0}` is not what memstress expects: {1}")]
    Unexpected(String, &'static str),
}

/// BTF type kinds (`BTF_KIND_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Void,
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    DataSec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Void,
            1 => Self::Int,
            2 => Self::Ptr,
            3 => Self::Array,
            4 => Self::Struct,
            5 => Self::Union,
            6 => Self::Enum,
            7 => Self::Fwd,
            8 => Self::Typedef,
            9 => Self::Volatile,
            10 => Self::Const,
            11 => Self::Restrict,
            12 => Self::Func,
            13 => Self::FuncProto,
            14 => Self::Var,
            15 => Self::DataSec,
            16 => Self::Float,
            17 => Self::DeclTag,
            18 => Self::TypeTag,
            19 => Self::Enum64,
            _ => return None,
        })
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Struct => "struct",
            Self::Union => "union",
            Self::Enum | Self::Enum64 => "enum",
            Self::Typedef => "typedef",
            Self::Func => "function",
            Self::FuncProto => "function prototype",
            _ => "type",
        }
    }
}

/// One parsed type header. `extra` is where the kind-specific data after the 12-byte header
/// starts in the type section.
#[derive(Clone, Copy, Debug)]
struct TypeEntry {
    kind: Kind,
    name_off: u32,
    vlen: u16,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    extra: usize,
}

/// A struct or union member, with its offset from the start of the outer type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Byte offset of the member (for a bitfield, of the byte holding its first bit).
    pub offset: u32,
    /// Bit offset of the member.
    pub bit_offset: u32,
    /// The member's type id.
    pub type_id: u32,
    /// Width in bits when the member is a bitfield.
    pub bitfield_size: Option<u32>,
}

/// An array type's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArrayInfo {
    /// Element type id.
    pub elem_type: u32,
    /// Number of elements.
    pub len: u32,
}

/// Parsed BTF.
pub struct Btf {
    types_section: Vec<u8>,
    strings: Vec<u8>,
    /// Index 0 is `void`; type id N is `types[N]`.
    types: Vec<TypeEntry>,
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf")
            .field("types", &self.types.len())
            .finish()
    }
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, BtfError> {
    data.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(BtfError::Corrupt("read past the end"))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(
        at..at
            .checked_add(4)
            .ok_or(BtfError::Corrupt("offset overflow"))?,
    )
    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    .ok_or(BtfError::Corrupt("read past the end"))
}

impl Btf {
    /// Reads and parses a BTF file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let data = fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses raw BTF (little-endian, as the running kernel exposes it).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = u16_at(data, 0)?;
        if magic != MAGIC {
            return Err(BtfError::Magic(magic));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        if hdr_len < HEADER_MIN || hdr_len > data.len() {
            return Err(BtfError::Corrupt("header length"));
        }
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let section = |off: usize, len: usize| -> Result<&[u8], BtfError> {
            let start = hdr_len
                .checked_add(off)
                .ok_or(BtfError::Corrupt("section offset"))?;
            let end = start
                .checked_add(len)
                .ok_or(BtfError::Corrupt("section length"))?;
            data.get(start..end)
                .ok_or(BtfError::Corrupt("section past the end"))
        };
        let types_section = section(type_off, type_len)?.to_vec();
        let strings = section(str_off, str_len)?.to_vec();

        let mut types = vec![TypeEntry {
            kind: Kind::Void,
            name_off: 0,
            vlen: 0,
            kind_flag: false,
            size_or_type: 0,
            extra: 0,
        }];
        let mut at = 0;
        while at < types_section.len() {
            let name_off = u32_at(&types_section, at)?;
            let info = u32_at(&types_section, at + 4)?;
            let size_or_type = u32_at(&types_section, at + 8)?;
            let vlen = (info & 0xffff) as u16;
            let kind = Kind::from_raw((info >> 24) & 0x1f)
                .ok_or(BtfError::Corrupt("unknown type kind"))?;
            let kind_flag = info >> 31 == 1;
            let extra = at + 12;
            let vlen_usize = usize::from(vlen);
            let extra_len = match kind {
                Kind::Int | Kind::Var | Kind::DeclTag => 4,
                Kind::Array => 12,
                Kind::Struct | Kind::Union | Kind::Enum64 | Kind::DataSec => 12 * vlen_usize,
                Kind::Enum | Kind::FuncProto => 8 * vlen_usize,
                _ => 0,
            };
            let next = extra
                .checked_add(extra_len)
                .filter(|&next| next <= types_section.len())
                .ok_or(BtfError::Corrupt("type data past the end"))?;
            types.push(TypeEntry {
                kind,
                name_off,
                vlen,
                kind_flag,
                size_or_type,
                extra,
            });
            at = next;
        }
        Ok(Self {
            types_section,
            strings,
            types,
        })
    }

    /// Number of types, `void` included.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Whether only `void` is present.
    pub fn is_empty(&self) -> bool {
        self.types.len() <= 1
    }

    fn entry(&self, id: u32) -> Result<&TypeEntry, BtfError> {
        self.types
            .get(id as usize)
            .ok_or(BtfError::Corrupt("type id out of range"))
    }

    fn string(&self, off: u32) -> Result<&str, BtfError> {
        let rest = self
            .strings
            .get(off as usize..)
            .ok_or(BtfError::Corrupt("string offset"))?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(BtfError::Corrupt("unterminated string"))?;
        std::str::from_utf8(&rest[..end]).map_err(|_| BtfError::Corrupt("string is not UTF-8"))
    }

    /// The name of type `id` (empty for anonymous types).
    pub fn name_of(&self, id: u32) -> Result<&str, BtfError> {
        self.string(self.entry(id)?.name_off)
    }

    /// The kind of type `id`.
    pub fn kind_of(&self, id: u32) -> Result<Kind, BtfError> {
        Ok(self.entry(id)?.kind)
    }

    /// The id of the first type of `kind` named `name`.
    pub fn find(&self, kind: Kind, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, t)| t.kind == kind && self.string(t.name_off).is_ok_and(|n| n == name))
            .map(|(id, _)| id as u32)
            .ok_or_else(|| BtfError::NoType {
                kind: kind.describe(),
                name: name.to_owned(),
            })
    }

    /// Follows typedefs and qualifiers (const, volatile, restrict, type tags) to the type
    /// they name.
    pub fn resolve(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..64 {
            let entry = self.entry(id)?;
            match entry.kind {
                Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag => {
                    id = entry.size_or_type;
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::Corrupt("type chain too long"))
    }

    /// Size in bytes of type `id`.
    pub fn size_of(&self, id: u32) -> Result<u64, BtfError> {
        self.size_within(id, 32)
    }

    fn size_within(&self, id: u32, depth: u32) -> Result<u64, BtfError> {
        if depth == 0 {
            return Err(BtfError::Corrupt("array nesting too deep"));
        }
        let id = self.resolve(id)?;
        let entry = self.entry(id)?;
        match entry.kind {
            Kind::Int
            | Kind::Struct
            | Kind::Union
            | Kind::Enum
            | Kind::Enum64
            | Kind::Float
            | Kind::DataSec => Ok(u64::from(entry.size_or_type)),
            Kind::Ptr => Ok(8),
            Kind::Array => {
                let array = self.array(id)?;
                self.size_within(array.elem_type, depth - 1)?
                    .checked_mul(u64::from(array.len))
                    .ok_or(BtfError::Corrupt("array size overflows"))
            }
            _ => Err(BtfError::Corrupt("type has no size")),
        }
    }

    /// Shape of array type `id` (after resolving typedefs).
    pub fn array(&self, id: u32) -> Result<ArrayInfo, BtfError> {
        let id = self.resolve(id)?;
        let entry = self.entry(id)?;
        if entry.kind != Kind::Array {
            return Err(BtfError::Unexpected(self.describe(id), "not an array"));
        }
        Ok(ArrayInfo {
            elem_type: u32_at(&self.types_section, entry.extra)?,
            len: u32_at(&self.types_section, entry.extra + 8)?,
        })
    }

    /// The direct members of a struct or union: (name, member).
    pub fn members(&self, id: u32) -> Result<Vec<(&str, Member)>, BtfError> {
        let id = self.resolve(id)?;
        let entry = self.entry(id)?;
        if !matches!(entry.kind, Kind::Struct | Kind::Union) {
            return Err(BtfError::Unexpected(
                self.describe(id),
                "not a struct or union",
            ));
        }
        (0..usize::from(entry.vlen))
            .map(|i| {
                let at = entry.extra + 12 * i;
                let name = self.string(u32_at(&self.types_section, at)?)?;
                let type_id = u32_at(&self.types_section, at + 4)?;
                let raw = u32_at(&self.types_section, at + 8)?;
                let (bit_offset, bitfield_size) = if entry.kind_flag {
                    (raw & 0x00ff_ffff, Some(raw >> 24).filter(|&s| s != 0))
                } else {
                    (raw, None)
                };
                Ok((
                    name,
                    Member {
                        offset: bit_offset / 8,
                        bit_offset,
                        type_id,
                        bitfield_size,
                    },
                ))
            })
            .collect()
    }

    /// Finds member `name` of struct/union `id`, looking through anonymous nested structs and
    /// unions, and returns it with its offset from the start of `id`.
    pub fn member_of(&self, id: u32, name: &str) -> Result<Option<Member>, BtfError> {
        self.member_of_depth(id, name, 0)
    }

    fn member_of_depth(&self, id: u32, name: &str, depth: u32) -> Result<Option<Member>, BtfError> {
        if depth > 16 {
            return Err(BtfError::Corrupt("anonymous members nested too deep"));
        }
        let members = self.members(id)?;
        if let Some((_, member)) = members.iter().find(|(n, _)| *n == name) {
            return Ok(Some(member.clone()));
        }
        for (member_name, member) in &members {
            if !member_name.is_empty() {
                continue;
            }
            let inner = self.resolve(member.type_id)?;
            if !matches!(self.kind_of(inner)?, Kind::Struct | Kind::Union) {
                continue;
            }
            if let Some(found) = self.member_of_depth(inner, name, depth + 1)? {
                return Ok(Some(Member {
                    offset: member.offset + found.offset,
                    bit_offset: member.bit_offset + found.bit_offset,
                    ..found
                }));
            }
        }
        Ok(None)
    }

    /// Offset of `member` in `struct name` (or union), looking through anonymous members.
    pub fn struct_member(&self, ty: &str, member: &str) -> Result<Member, BtfError> {
        let id = self
            .find(Kind::Struct, ty)
            .or_else(|_| self.find(Kind::Union, ty))?;
        self.member_of(id, member)?
            .ok_or_else(|| BtfError::NoMember {
                ty: ty.to_owned(),
                member: member.to_owned(),
            })
    }

    /// Value of enumerator `name`, searched in every enum.
    pub fn enum_value(&self, name: &str) -> Result<i64, BtfError> {
        for entry in self.types.iter().skip(1) {
            let (stride, wide) = match entry.kind {
                Kind::Enum => (8, false),
                Kind::Enum64 => (12, true),
                _ => continue,
            };
            for i in 0..usize::from(entry.vlen) {
                let at = entry.extra + stride * i;
                if self.string(u32_at(&self.types_section, at)?)? != name {
                    continue;
                }
                let lo = u32_at(&self.types_section, at + 4)?;
                return Ok(if wide {
                    let hi = u32_at(&self.types_section, at + 8)?;
                    ((u64::from(hi) << 32) | u64::from(lo)) as i64
                } else if entry.kind_flag {
                    i64::from(lo as i32)
                } else {
                    i64::from(lo)
                });
            }
        }
        Err(BtfError::NoType {
            kind: "enumerator",
            name: name.to_owned(),
        })
    }

    /// Parameter type ids of the function prototype that typedef `name` points to
    /// (`btf_trace_<event>` typedefs describe BTF tracepoints this way).
    pub fn func_proto_params(&self, typedef: &str) -> Result<Vec<u32>, BtfError> {
        let id = self.find(Kind::Typedef, typedef)?;
        let mut target = self.entry(id)?.size_or_type;
        if self.kind_of(target)? == Kind::Ptr {
            target = self.entry(target)?.size_or_type;
        }
        let target = self.resolve(target)?;
        let entry = self.entry(target)?;
        if entry.kind != Kind::FuncProto {
            return Err(BtfError::Unexpected(
                typedef.to_owned(),
                "not a function prototype",
            ));
        }
        (0..usize::from(entry.vlen))
            .map(|i| u32_at(&self.types_section, entry.extra + 8 * i + 4))
            .collect()
    }

    /// A C-like description of type `id`, for messages ("struct task_struct *").
    pub fn describe(&self, id: u32) -> String {
        self.describe_within(id, 32)
    }

    /// [`Self::describe`], giving up after `depth` levels: a corrupt (or hostile) BTF can
    /// make types refer to themselves.
    fn describe_within(&self, id: u32, depth: u32) -> String {
        let Ok(entry) = self.entry(id) else {
            return format!("<type {id}>");
        };
        if depth == 0 {
            return "…".to_owned();
        }
        let inner = |id| self.describe_within(id, depth - 1);
        let name = self.string(entry.name_off).unwrap_or("?");
        match entry.kind {
            Kind::Void => "void".to_owned(),
            Kind::Ptr => format!("{} *", inner(entry.size_or_type)),
            Kind::Const => format!("const {}", inner(entry.size_or_type)),
            Kind::Volatile => format!("volatile {}", inner(entry.size_or_type)),
            Kind::Array => match self.array(id) {
                Ok(a) => format!("{}[{}]", inner(a.elem_type), a.len),
                Err(_) => "<array>".to_owned(),
            },
            Kind::Struct | Kind::Union | Kind::Enum | Kind::Enum64 => {
                let kw = entry.kind.describe();
                if name.is_empty() {
                    format!("{kw} <anon>")
                } else {
                    format!("{kw} {name}")
                }
            }
            _ => name.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob by hand: `struct outer { int a; union { long b; int c; }; }`.
    pub(crate) fn tiny() -> Vec<u8> {
        let mut strings = b"\0int\0long\0outer\0a\0b\0c\0E\0X\0".to_vec();
        strings.push(0);
        let int_name = 1u32;
        let long_name = 5;
        let outer_name = 10;
        let a_name = 16;
        let b_name = 18;
        let c_name = 20;
        let e_name = 22;
        let x_name = 24;
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (4 bytes, signed, 32 bits)
        push(&[int_name, 1 << 24, 4, (1 << 24) | 32]);
        // 2: long (8 bytes)
        push(&[long_name, 1 << 24, 8, (1 << 24) | 64]);
        // 3: union { long b; int c; }
        push(&[0, (5 << 24) | 2, 8, b_name, 2, 0, c_name, 1, 0]);
        // 4: struct outer { int a; <anon union at 64 bits>; }
        push(&[outer_name, (4 << 24) | 2, 16, a_name, 1, 0, 0, 3, 64]);
        // 5: enum E { X = 7 }
        push(&[e_name, (6 << 24) | 1, 4, x_name, 7]);
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC.to_le_bytes());
        blob.push(1);
        blob.push(0);
        blob.extend_from_slice(&24u32.to_le_bytes());
        blob.extend_from_slice(&0u32.to_le_bytes());
        blob.extend_from_slice(&(types.len() as u32).to_le_bytes());
        blob.extend_from_slice(&(types.len() as u32).to_le_bytes());
        blob.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&tiny()).expect("tiny BTF parses");
        assert_eq!(btf.len(), 6);
        assert_eq!(btf.struct_member("outer", "a").unwrap().offset, 0);
        let c = btf
            .struct_member("outer", "c")
            .expect("c is inside the anonymous union");
        assert_eq!(c.offset, 8);
        assert_eq!(btf.size_of(c.type_id).unwrap(), 4);
        assert_eq!(btf.struct_member("outer", "b").unwrap().offset, 8);
        assert!(matches!(
            btf.struct_member("outer", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert_eq!(btf.enum_value("X").unwrap(), 7);
        assert_eq!(
            btf.size_of(btf.find(Kind::Struct, "outer").unwrap())
                .unwrap(),
            16
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        let blob = tiny();
        for cut in 0..blob.len() {
            let _ = Btf::parse(&blob[..cut]);
        }
        assert!(matches!(Btf::parse(b"\x00\x00"), Err(BtfError::Magic(0))));
        let mut bad = blob.clone();
        bad[12] = 0xff; // type_len far past the end
        assert!(Btf::parse(&bad).is_err());
    }
}
