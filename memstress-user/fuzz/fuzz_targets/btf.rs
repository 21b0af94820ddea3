//! Kernel BTF (/sys/kernel/btf/vmlinux): parsing, and the lookups memstress makes in it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memstress::probe::btf::Btf;

fuzz_target!(|data: &[u8]| {
    let Ok(btf) = Btf::parse(data) else {
        return;
    };
    for id in 0..btf.len().min(64) as u32 {
        let _ = btf.describe(id);
        let _ = btf.size_of(id);
        let _ = btf.members(id);
        let _ = btf.array(id);
    }
    let _ = btf.struct_member("task_struct", "pid");
    let _ = btf.enum_value("CONSTRAINT_MEMCG");
    let _ = btf.func_proto_params("btf_trace_mark_victim");
    let _ = memstress::probe::layout::resolve(&btf, None);
});
