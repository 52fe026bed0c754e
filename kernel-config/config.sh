#!/bin/sh
# capsa guest kernel configuration, applied inside a Linux 6.1 source tree:
#   cd linux-source-6.1 && sh /path/to/kernel-config/config.sh
# Starts from tinyconfig and turns on only what a container guest needs.
# docs/kernel.md explains each group and why it is here.
set -e
make ARCH=x86_64 tinyconfig >/dev/null
C=scripts/config

# 64-bit, one binary, no modules.
$C -e 64BIT -e X86_64 -d MODULES

# Console: printk and one 8250 UART (off unless the VMM enables it).
$C -e PRINTK -e PRINTK_TIME -e EARLY_PRINTK -e TTY -e SERIAL_8250 -e SERIAL_8250_CONSOLE \
   -d SERIAL_8250_PCI -d SERIAL_8250_EXAR -d SERIAL_8250_LPSS -d SERIAL_8250_MID -d SERIAL_8250_PERICOM \
   --set-val SERIAL_8250_NR_UARTS 1 --set-val SERIAL_8250_RUNTIME_UARTS 1

# Executables and the initramfs (uncompressed cpio only: inflating runs in
# guest kernel mode, which is slow everywhere and very slow on PVM hosts).
$C -e BINFMT_ELF -e BINFMT_SCRIPT -e BLK_DEV_INITRD \
   -d RD_GZIP -d RD_BZIP2 -d RD_LZMA -d RD_XZ -d RD_LZO -d RD_LZ4 -d RD_ZSTD

# Pseudo filesystems the agent mounts.
$C -e DEVTMPFS -e DEVTMPFS_MOUNT -e PROC_FS -e PROC_SYSCTL -e SYSFS -e TMPFS -e TMPFS_POSIX_ACL \
   -e TMPFS_XATTR -e SHMEM -e UNIX98_PTYS -e INOTIFY_USER -e FHANDLE

# /dev/mem, so that the agent can write the boot-timer MMIO register.
$C -e DEVMEM -e STRICT_DEVMEM

# Hypervisor guest: PVH entry, kvmclock; no other hypervisors.
$C -e HYPERVISOR_GUEST -e PARAVIRT -e KVM_GUEST -e PARAVIRT_CLOCK -e PVH -d XEN -d PARAVIRT_SPINLOCKS \
   -d JAILHOUSE_GUEST -d ACRN_GUEST -d PARAVIRT_TIME_ACCOUNTING

# virtio over MMIO (devices announced on the command line), and the devices.
$C -e BLOCK -e BLK_DEV -e VIRTIO_MENU -e VIRTIO -e VIRTIO_MMIO -e VIRTIO_MMIO_CMDLINE_DEVICES \
   -e VIRTIO_BLK -e HW_RANDOM -e HW_RANDOM_VIRTIO

# Container root filesystems: ext4 or erofs images, virtio-fs shares, overlay.
$C -e EXT4_FS -e MISC_FILESYSTEMS -e EROFS_FS -e FUSE_FS -e VIRTIO_FS -e OVERLAY_FS

# Networking: loopback, Unix sockets, vsock (the control channel).
$C -e NET -e UNIX -e INET -e VSOCKETS -e VIRTIO_VSOCKETS -d WIRELESS -d WLAN -d ETHERNET

# The container's network (docs/kernel.md "Network"): the engine's
# interface reaches the guest as virtio-net (backed by a TAP on the host,
# joined to the engine's veth with tc mirred there — no tc in the guest);
# IPv4 and IPv6 with the agent configuring them over rtnetlink. No
# tunnels, IPsec or multicast routing: nothing extra to create at boot.
$C -e NETDEVICES -e NET_CORE -e VIRTIO_NET -e IPV6 \
   -d IPV6_SIT -d IPV6_TUNNEL -d IPV6_VTI -d INET6_AH -d INET6_ESP -d INET6_IPCOMP -d IPV6_MIP6 \
   -d IPV6_MROUTE -d IPV6_SEG6_LWTUNNEL -d IPV6_FOU -d IPV6_ILA -d NET_IPIP -d NET_IPGRE_DEMUX \
   -d INET_DIAG -d INET_AH -d INET_ESP -d INET_IPCOMP -d XFRM_USER -d NETFILTER -d NET_SCHED \
   -d NET_VENDOR_INTEL -d PHYLIB -d MDIO_DEVICE

# System calls that ordinary container programs use.
$C -e FUTEX -e EPOLL -e SIGNALFD -e TIMERFD -e EVENTFD -e AIO -e FILE_LOCKING -e MULTIUSER \
   -e POSIX_TIMERS -e SYSVIPC -e POSIX_MQUEUE -e RSEQ -e MEMBARRIER -e ADVISE_SYSCALLS \
   -e HIGH_RES_TIMERS -e SECCOMP -e SECCOMP_FILTER

# Namespaces and cgroups, for the container's own isolation inside the guest.
$C -e NAMESPACES -e UTS_NS -e IPC_NS -e PID_NS -e NET_NS -e USER_NS \
   -e CGROUPS -e MEMCG -e CGROUP_PIDS -e CGROUP_SCHED -e FAIR_GROUP_SCHED -e CFS_BANDWIDTH \
   -e CGROUP_FREEZER -e CGROUP_DEVICE

# Interrupt routing without ACPI: an MP table written by the VMM, which
# also lists the vCPUs. SMP: every vCPU is used (the application processors
# are started by INIT/STARTUP IPIs through the local APIC); up to 32, as
# many as the VMM's MP table holds.
$C -e X86_MPPARSE -e SMP -e X86_LOCAL_APIC -e X86_IO_APIC --set-val NR_CPUS 32

# Off: what a micro-VM guest has no use for, or what costs boot time.
$C -d ACPI -d PCI -d FTRACE -d FUNCTION_TRACER -d JUMP_LABEL -d KPROBES -d RANDOMIZE_BASE \
   -d PAGE_TABLE_ISOLATION -d RETPOLINE -d SPECULATION_MITIGATIONS -d CPU_MITIGATIONS \
   -d DEBUG_KERNEL -d DEBUG_INFO -d DEBUG_BUGVERBOSE -d KALLSYMS -d STACKPROTECTOR -d STACKPROTECTOR_STRONG \
   -d DEBUG_FS -d MAGIC_SYSRQ -d SECURITY -d AUDIT -d PROFILING -d PERF_EVENTS -d HIBERNATION -d SUSPEND -d PM \
   -d CPU_FREQ -d CPU_IDLE -d MICROCODE -d X86_MCE -d DMI -d EFI -d MTRR -d X86_PAT -d STRICT_KERNEL_RWX

# Boot time: the ORC unwinder's table sort and a 250 Hz tick cost seconds
# of guest kernel time; idle ticks are dropped.
$C -d SLUB_DEBUG -d UNWINDER_ORC -d UNWINDER_FRAME_POINTER -e UNWINDER_GUESS \
   -d HZ_250 -e HZ_100 --set-val HZ 100 -d HZ_PERIODIC -e NO_HZ_IDLE
$C -e CC_OPTIMIZE_FOR_PERFORMANCE -d CC_OPTIMIZE_FOR_SIZE -e SLUB -d SLOB
# SLUB's /sys/kernel/slab/<cache>/ directories (~40 files per cache) were
# 11% of a cold boot's guest CPU; SLUB_SYSFS is patches/0006's switch.
$C -d SLUB_SYSFS

# Fewer device nodes and drivers to probe at boot.
$C -d LEGACY_PTYS -d VT -d INPUT -d SERIO

make ARCH=x86_64 olddefconfig >/dev/null
