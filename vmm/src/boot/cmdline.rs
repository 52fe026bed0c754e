//! Building the kernel command line: the user's part (or the default),
//! the console, the virtio-mmio device announcements
//! (`virtio_mmio.device=<size>@<base>:<irq>`, Linux
//! drivers/virtio/virtio_mmio.c) and the host quirk parameters.

use linux_loader::cmdline::Cmdline;

use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;

/// Errors building the command line.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    /// The result is longer than the kernel accepts, or has a character it
    /// cannot take.
    #[error("kernel command line: {0}")]
    Invalid(#[from] linux_loader::cmdline::Error),
}

/// A virtio-mmio device as the kernel needs to be told about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// First address of its window.
    pub base: u64,
    /// Size of its window in bytes.
    pub size: u64,
    /// Its IOAPIC pin.
    pub irq: u32,
}

/// What goes into the command line besides the user's part.
#[derive(Debug, Clone, Default)]
pub struct CmdlineParts<'a> {
    /// Print the kernel console on COM1.
    pub serial_console: bool,
    /// virtio-mmio devices to announce.
    pub devices: &'a [MmioDeviceInfo],
    /// Extra parameters (flags such as `capsa_pvm`).
    pub params: &'a [&'a str],
    /// CPU features to hide, merged with any `clearcpuid=` of the user.
    pub clearcpuid: &'a [&'a str],
}

/// Builds the full command line from the user's part `base`.
pub fn build(base: &str, parts: &CmdlineParts<'_>) -> Result<Cmdline, CmdlineError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE)?;
    let mut clear: Vec<String> = Vec::new();
    let mut user = Vec::new();
    for token in base.split_ascii_whitespace() {
        match token.strip_prefix("clearcpuid=") {
            Some(list) if !parts.clearcpuid.is_empty() => {
                clear.extend(list.split(',').filter(|s| !s.is_empty()).map(str::to_owned))
            }
            _ => user.push(token),
        }
    }
    if !user.is_empty() {
        cmdline.insert_str(user.join(" "))?;
    }
    if parts.serial_console {
        cmdline.insert("console", "ttyS0")?;
    } else {
        // No UART: keep the 8250 driver from probing ports that are not there.
        cmdline.insert("8250.nr_uarts", "0")?;
    }
    for dev in parts.devices {
        cmdline.add_virtio_mmio_device(
            dev.size,
            vm_memory::GuestAddress(dev.base),
            dev.irq,
            None,
        )?;
    }
    for param in parts.params {
        cmdline.insert_str(param)?;
    }
    for feature in parts.clearcpuid {
        if !clear.iter().any(|c| c == feature) {
            clear.push((*feature).to_owned());
        }
    }
    if !clear.is_empty() {
        cmdline.insert("clearcpuid", &clear.join(","))?;
    }
    Ok(cmdline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(c: &Cmdline) -> String {
        c.as_cstring().unwrap().into_string().unwrap()
    }

    #[test]
    fn console_and_devices() {
        let devs = [
            MmioDeviceInfo {
                base: 0xc000_1000,
                size: 0x1000,
                irq: 5,
            },
            MmioDeviceInfo {
                base: 0xc000_2000,
                size: 0x1000,
                irq: 6,
            },
        ];
        let c = build(
            "reboot=k panic=-1",
            &CmdlineParts {
                serial_console: true,
                devices: &devs,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            s(&c),
            "reboot=k panic=-1 console=ttyS0 virtio_mmio.device=4K@0xc0001000:5 \
             virtio_mmio.device=4K@0xc0002000:6"
        );
    }

    #[test]
    fn no_serial_disables_uart_probing() {
        let c = build("quiet", &CmdlineParts::default()).unwrap();
        assert_eq!(s(&c), "quiet 8250.nr_uarts=0");
    }

    #[test]
    fn clearcpuid_lists_are_merged_into_one() {
        let c = build(
            "a clearcpuid=avx,xsave b",
            &CmdlineParts {
                serial_console: true,
                params: &["capsa_pvm"],
                clearcpuid: &["xsave", "cx16"],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            s(&c),
            "a b console=ttyS0 capsa_pvm clearcpuid=avx,xsave,cx16"
        );
    }

    #[test]
    fn user_clearcpuid_is_kept_when_no_quirks() {
        let c = build(
            "clearcpuid=avx",
            &CmdlineParts {
                serial_console: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s(&c), "clearcpuid=avx console=ttyS0");
    }

    #[test]
    fn too_long_is_an_error() {
        let long = "x".repeat(CMDLINE_MAX_SIZE + 1);
        assert!(build(&long, &CmdlineParts::default()).is_err());
    }
}
