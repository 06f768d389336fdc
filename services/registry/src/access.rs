//! Which role each registry call needs (the auth layer's policy). A forced DeleteVersion also
//! needs `admin`, checked in the handler, where the flag is known.

use kappa_runtime::auth::{Access, Role};

pub fn access(path: &str) -> Access {
    let Some(method) = path.strip_prefix("/kappa.registry.v1.Registry/") else {
        return Access::Unlisted;
    };
    match method {
        "GetModel" | "ListModels" | "ListVersions" | "WatchModels" => Access::Needs(Role::Read),
        "Publish" | "SetAlias" | "DeleteAlias" | "DeleteVersion" => Access::Needs(Role::Write),
        _ => Access::Unlisted,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_registry_method_has_a_role() {
        let paths = kappa_api::method_paths("kappa.registry.v1.Registry");
        assert_eq!(paths.len(), 8, "{paths:?}");
        for path in paths {
            assert_ne!(super::access(&path), kappa_runtime::auth::Access::Unlisted, "{path}");
        }
    }
}
