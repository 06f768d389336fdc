//! What Kappa's server-side tower layers share.

/// The service `poll_ready` prepared, leaving a clone in its place: tower lets a clone that was
/// not polled ready fail, so the call must go to the one that was.
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
