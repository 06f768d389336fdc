//! Test-only fault hooks (hidden flags): they let the end-to-end tests make the real binary
//! panic where a bug would, and fail a read the way a broker would, without patching it.
//! All are off unless set.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct FaultArgs {
    /// Test only: an inference batch holding this exact value panics in the forward pass.
    #[arg(
        long = "fault-panic-inference-on",
        env = "KAPPA_FAULT_PANIC_INFERENCE_ON",
        hide = true
    )]
    pub panic_inference_on: Option<f32>,

    /// Test only: the loader task panics the first time it is asked to serve this version.
    #[arg(
        long = "fault-panic-loader-on-version",
        env = "KAPPA_FAULT_PANIC_LOADER_ON_VERSION",
        hide = true
    )]
    pub panic_loader_on_version: Option<u64>,

    /// Test only: this many reads of a version's weights from the models topic fail first.
    #[arg(
        long = "fault-fail-weight-reads",
        env = "KAPPA_FAULT_FAIL_WEIGHT_READS",
        hide = true,
        default_value_t = 0
    )]
    pub fail_weight_reads: u32,
}

#[derive(Debug, Default)]
pub struct Faults {
    args: FaultArgs,
    loader_panicked: AtomicBool,
    weight_reads: AtomicU32,
}

impl Faults {
    pub fn new(args: FaultArgs) -> Self {
        Self {
            args,
            ..Self::default()
        }
    }

    pub fn before_inference(&self, inputs: &[f32]) {
        if let Some(value) = self.args.panic_inference_on
            && inputs.contains(&value)
        {
            panic!("fault injection: the forward pass panicked on the value {value}");
        }
    }

    pub fn before_serving(&self, version: u64) {
        if self.args.panic_loader_on_version == Some(version) && !self.loader_panicked.swap(true, Ordering::SeqCst) {
            panic!("fault injection: the loader panicked on its way to version {version}");
        }
    }

    pub fn before_weight_read(&self) -> Result<(), String> {
        if self.weight_reads.fetch_add(1, Ordering::SeqCst) < self.args.fail_weight_reads {
            return Err("fault injection: the weights read failed as if the broker had gone away".into());
        }
        Ok(())
    }
}
