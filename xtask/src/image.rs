//! `cargo xtask image`: the container image deploy/ names, as a tarball that both
//! `docker load` (Docker 20.10 and later) and `ctr images import` (containerd 1.6 and later)
//! accept.
//!
//! The tarball is an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) with a
//! Docker `manifest.json` beside it that points at the same blobs: the layout `docker save`
//! writes since Docker 25. Older Docker reads only `manifest.json`; containerd reads
//! `index.json` (and the names in both). One uncompressed layer holds the release `memstress`
//! at `/usr/local/bin/memstress` and the shared libraries `ldd` lists, at their own paths;
//! nothing else (the runtime provides `/proc`, `/sys`, `/dev`). The entrypoint is memstress.
//! Every timestamp is 0 and every owner root: the same binary gives the same image digest.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use crate::{root, run, run_quiet};

/// The image's repository; the tag is the workspace's version.
pub const REPOSITORY: &str = "ghcr.io/memstress/memstress";
/// Where the tarball is written.
pub const TARBALL: &str = "target/memstress-image.tar";

/// `ghcr.io/memstress/memstress:<version>`.
pub fn reference() -> String {
    format!("{REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// Builds the tarball from `bin` (the release memstress); returns its path.
pub fn image(bin: &Path) -> Result<PathBuf> {
    let work = root().join("target/image");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    }
    let rootfs = work.join("rootfs");
    let blobs = work.join("layout/blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let dest = rootfs.join("usr/local/bin/memstress");
    fs::create_dir_all(dest.parent().expect("a parent"))?;
    fs::copy(bin, &dest).with_context(|| format!("cannot copy {}", bin.display()))?;
    for lib in ldd(bin)? {
        let to = rootfs.join(lib.strip_prefix("/").expect("ldd lists absolute paths"));
        fs::create_dir_all(to.parent().expect("a parent"))?;
        // Symbolic links (the loader's /lib64 path) are copied as the file they name.
        fs::copy(&lib, &to).with_context(|| format!("cannot copy {}", lib.display()))?;
    }
    // The layer.
    let layer = work.join("layer.tar");
    run(deterministic_tar()
        .arg("-cf")
        .arg(&layer)
        .arg("-C")
        .arg(&rootfs)
        .arg("."))?;
    let (layer_digest, layer_size) = blob(&layer, &blobs)?;
    let created = "1970-01-01T00:00:00Z";
    let version = env!("CARGO_PKG_VERSION");
    let config = json!({
        "created": created,
        "architecture": arch(),
        "os": "linux",
        "config": {
            "Entrypoint": ["/usr/local/bin/memstress"],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "NO_COLOR=1"],
            "Labels": {
                "org.opencontainers.image.title": "memstress",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.source": "https://github.com/memstress/memstress",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": created, "created_by": "cargo xtask image"}],
    });
    let (config_digest, config_size) = json_blob(&config, &work.join("config.json"), &blobs)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) =
        json_blob(&manifest, &work.join("manifest.json"), &blobs)?;
    let reference = reference();
    let layout = work.join("layout");
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": version,
            },
        }],
    });
    fs::write(layout.join("index.json"), index.to_string())?;
    fs::write(
        layout.join("oci-layout"),
        json!({"imageLayoutVersion": "1.0.0"}).to_string(),
    )?;
    let hex = |d: &str| d.trim_start_matches("sha256:").to_owned();
    let docker = json!([{
        "Config": format!("blobs/sha256/{}", hex(&config_digest)),
        "RepoTags": [reference],
        "Layers": [format!("blobs/sha256/{}", hex(&layer_digest))],
    }]);
    fs::write(layout.join("manifest.json"), docker.to_string())?;
    let tarball = root().join(TARBALL);
    run(deterministic_tar()
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(&layout)
        .args(["oci-layout", "index.json", "manifest.json", "blobs"]))?;
    fs::remove_dir_all(&work).ok();
    eprintln!(
        "xtask: wrote {} ({reference}, manifest {manifest_digest}); load it with \
         `docker load -i {TARBALL}` or `ctr images import {TARBALL}`",
        tarball.display()
    );
    Ok(tarball)
}

/// GNU tar with sorted names, time 0 and root ownership.
fn deterministic_tar() -> Command {
    let mut cmd = Command::new("tar");
    cmd.args([
        "--sort=name",
        "--mtime=@0",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "--format=posix",
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
    ]);
    cmd
}

/// The OCI architecture name of this machine.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Moves `file` into `blobs` under its digest; returns `sha256:<hex>` and its size.
fn blob(file: &Path, blobs: &Path) -> Result<(String, u64)> {
    let out = run_quiet(Command::new("sha256sum").arg(file))?;
    let hex = out.split_whitespace().next().unwrap_or_default().to_owned();
    if hex.len() != 64 {
        bail!("sha256sum {}: unexpected output {out:?}", file.display());
    }
    let size = fs::metadata(file)?.len();
    fs::rename(file, blobs.join(&hex))?;
    Ok((format!("sha256:{hex}"), size))
}

fn json_blob(value: &serde_json::Value, file: &Path, blobs: &Path) -> Result<(String, u64)> {
    fs::write(file, value.to_string())?;
    blob(file, blobs)
}

/// The libraries (and loader) `ldd` lists for `binary`.
fn ldd(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = run_quiet(Command::new("ldd").arg(binary))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}
