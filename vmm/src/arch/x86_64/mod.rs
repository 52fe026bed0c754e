//! x86_64: guest physical memory layout, GDT, boot registers, MP table,
//! CPUID and MSR setup.

pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
