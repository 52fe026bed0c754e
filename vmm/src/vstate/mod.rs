//! KVM state of one micro-VM: the VM file descriptor with its irqchip and
//! memory slots ([`vm`], [`memory`]) and the vCPUs ([`vcpu`]).

pub mod memory;
pub mod pause;
pub mod vcpu;
pub mod vm;
