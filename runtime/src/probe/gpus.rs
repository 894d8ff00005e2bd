//! GPU discovery on a node (SPEC §7: the scheduler matches `resources.gpu` against
//! what nodes report at join): NVIDIA cards through `nvidia-smi` (model and VRAM), or
//! the driver's `/proc/driver/nvidia/gpus/*/information` files when the tool is
//! missing (model only); AMD cards through sysfs (`/sys/class/drm/card*/device` with
//! vendor 0x1002 and `mem_info_vram_total`).

use std::path::Path;
use std::process::Command;

use kat_proto::v1alpha1::{Gpu, GpuDriver};

/// The GPUs of this host (none when there are none or nothing can be read).
pub fn discover() -> Vec<Gpu> {
    let mut gpus = nvidia();
    gpus.extend(amd(Path::new("/sys/class/drm")));
    gpus
}

fn nvidia() -> Vec<Gpu> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output();
    match out {
        Ok(out) if out.status.success() => parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout)),
        _ => nvidia_driver_files(Path::new("/proc/driver/nvidia/gpus")),
    }
}

/// `nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits`
/// lines: `0, NVIDIA H100 80GB HBM3, 81559` (MiB).
pub fn parse_nvidia_smi(text: &str) -> Vec<Gpu> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(',').map(str::trim);
            let index = fields.next()?.parse().ok()?;
            let model = fields.next()?.to_owned();
            let vram_mb = fields.next()?.parse().ok()?;
            Some(Gpu {
                driver: GpuDriver::Nvidia.into(),
                model,
                vram_mb,
                index,
            })
        })
        .collect()
}

/// One GPU per `<dir>/<bus id>/information` file (its `Model:` line); VRAM unknown (0).
pub fn nvidia_driver_files(dir: &Path) -> Vec<Gpu> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut bus_ids: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    bus_ids.sort();
    bus_ids
        .iter()
        .enumerate()
        .filter_map(|(i, bus)| {
            let text = std::fs::read_to_string(dir.join(bus).join("information")).ok()?;
            let model = text
                .lines()
                .find_map(|l| l.strip_prefix("Model:"))
                .map_or_else(|| "NVIDIA GPU".to_owned(), |m| m.trim().to_owned());
            Some(Gpu {
                driver: GpuDriver::Nvidia.into(),
                model,
                vram_mb: 0,
                index: u32::try_from(i).unwrap_or(u32::MAX),
            })
        })
        .collect()
}

/// AMD cards under a `/sys/class/drm`-like directory: `cardN/device/vendor` is
/// `0x1002`; VRAM from `mem_info_vram_total` (bytes); index N.
pub fn amd(drm: &Path) -> Vec<Gpu> {
    let Ok(entries) = std::fs::read_dir(drm) else {
        return Vec::new();
    };
    let mut gpus: Vec<Gpu> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // card0, card1 … (not card0-DP-1 connectors).
            let index: u32 = name.strip_prefix("card")?.parse().ok()?;
            let device = e.path().join("device");
            let vendor = std::fs::read_to_string(device.join("vendor")).ok()?;
            if vendor.trim() != "0x1002" {
                return None;
            }
            let vram_bytes: u64 = std::fs::read_to_string(device.join("mem_info_vram_total"))
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let model = std::fs::read_to_string(device.join("product_name"))
                .map(|m| m.trim().to_owned())
                .ok()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "AMD GPU".to_owned());
            Some(Gpu {
                driver: GpuDriver::Amd.into(),
                model,
                vram_mb: u32::try_from(vram_bytes / (1024 * 1024)).unwrap_or(u32::MAX),
                index,
            })
        })
        .collect();
    gpus.sort_by_key(|g| g.index);
    gpus
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nvidia_smi_lines_become_gpus() {
        let gpus = parse_nvidia_smi(
            "0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA GeForce RTX 3090, 24576\ngarbage\n",
        );
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].model, "NVIDIA H100 80GB HBM3");
        assert_eq!((gpus[0].index, gpus[0].vram_mb), (0, 81_559));
        assert_eq!(gpus[1].driver(), GpuDriver::Nvidia);
        assert_eq!(gpus[1].vram_mb, 24_576);
    }

    #[test]
    fn driver_files_give_models_without_vram() {
        let dir = tempfile::tempdir().unwrap();
        let bus = dir.path().join("0000:01:00.0");
        std::fs::create_dir(&bus).unwrap();
        std::fs::write(
            bus.join("information"),
            "Model: \t\t NVIDIA A100-SXM4-40GB\nIRQ:   42\n",
        )
        .unwrap();
        let gpus = nvidia_driver_files(dir.path());
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].model, "NVIDIA A100-SXM4-40GB");
        assert_eq!(gpus[0].vram_mb, 0);
        assert!(nvidia_driver_files(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn amd_cards_are_read_from_sysfs() {
        let drm = tempfile::tempdir().unwrap();
        let card = |name: &str, vendor: &str, vram: Option<&str>| {
            let dev = drm.path().join(name).join("device");
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(dev.join("vendor"), vendor).unwrap();
            if let Some(v) = vram {
                std::fs::write(dev.join("mem_info_vram_total"), v).unwrap();
            }
        };
        card("card1", "0x1002\n", Some("17163091968\n"));
        card("card0", "0x8086\n", None);
        card("card1-DP-1", "0x1002\n", None);
        let gpus = amd(drm.path());
        assert_eq!(gpus.len(), 1, "{gpus:?}");
        assert_eq!(gpus[0].driver(), GpuDriver::Amd);
        assert_eq!((gpus[0].index, gpus[0].vram_mb), (1, 16_368));
        assert_eq!(gpus[0].model, "AMD GPU");
    }
}
