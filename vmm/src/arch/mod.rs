//! Architecture-specific parts of the machine: memory layout, CPU
//! registers, firmware tables. Only x86_64 is supported; its code lives in
//! [`x86_64`] so that `cfg(target_arch)` does not leak into the core.

pub mod x86_64;
