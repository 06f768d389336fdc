//! `kappa models example`: an untrained autoencoder over the worked example's fields, with its
//! scaling fitted on a CSV when one is given.

use std::path::Path;

use anyhow::Context as _;
use kappa_api::model::ModelManifest;

pub(super) fn write_example(
    out: &Path,
    name: &str,
    hidden: &[u32],
    seed: u64,
    scale_from: Option<&Path>,
    threshold: f64,
) -> anyhow::Result<()> {
    let mut manifest = kappa_fleet::car_autoencoder(name, hidden);
    manifest.anomaly_threshold = threshold;
    if let Some(csv) = scale_from {
        fit_scaling(&mut manifest, csv)?;
    }
    kappa_model::validate_manifest(&manifest)?;
    let weights = kappa_model::example::random_weights(&manifest, seed);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let weights_path = out.join("weights.safetensors");
    let manifest_path = out.join("manifest.json");
    std::fs::write(&weights_path, &weights)?;
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)? + "\n")?;
    println!("wrote {} and {}", weights_path.display(), manifest_path.display());
    Ok(())
}

/// Sets each feature's offset and scale to the mean and standard deviation of its CSV column.
fn fit_scaling(manifest: &mut ModelManifest, csv: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("the CSV file is empty")?
        .split(',')
        .map(str::trim)
        .collect();
    let columns: Vec<usize> = manifest
        .features
        .iter()
        .map(|f| {
            header
                .iter()
                .position(|h| *h == f.name)
                .with_context(|| format!("{} has no column {:?}", csv.display(), f.name))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut sums = vec![(0.0_f64, 0.0_f64, 0_u64); columns.len()];
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        for (sum, &col) in sums.iter_mut().zip(&columns) {
            if let Some(v) = cells
                .get(col)
                .and_then(|c| c.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite())
            {
                sum.0 += v;
                sum.1 += v * v;
                sum.2 += 1;
            }
        }
    }
    for (feature, (sum, sq, n)) in manifest.features.iter_mut().zip(sums) {
        anyhow::ensure!(n > 1, "column {:?} has no numeric values", feature.name);
        let mean = sum / n as f64;
        let var = (sq / n as f64 - mean * mean).max(0.0);
        feature.offset = mean;
        // A constant column would divide by zero; any positive scale keeps it at zero.
        feature.scale = if var.sqrt() > 1e-9 { var.sqrt() } else { 1.0 };
    }
    Ok(())
}
