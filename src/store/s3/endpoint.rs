//! The S3 endpoint, resolved once per store rather than once per request.
//!
//! The SDK runs S3's endpoint rules (a 550-node decision graph with host-label checks) for
//! every request. It keeps the last answer, but keyed on every parameter, and the object key
//! is one of them: with a new key per request it never hits. The rules never read the key,
//! the prefix or the copy source (they are bound and unused in this SDK version), so this
//! cache compares everything else. A test fails if a later SDK adds a parameter this cache
//! does not compare.

use std::sync::Mutex;

use aws_sdk_s3::config::endpoint::{DefaultResolver, EndpointFuture, Params, ResolveEndpoint};
use aws_smithy_types::endpoint::Endpoint;

/// [`DefaultResolver`], answering again from its last result while only the key, prefix or
/// copy source changed.
#[derive(Debug, Default)]
pub struct KeyBlindCache {
    rules: DefaultResolver,
    last: Mutex<Option<(Params, Endpoint)>>,
}

/// The parameters the cache compares: all of `Params` but `key`, `prefix`, `copy_source`.
fn same_but_object(a: &Params, b: &Params) -> bool {
    a.bucket() == b.bucket()
        && a.region() == b.region()
        && a.use_fips() == b.use_fips()
        && a.use_dual_stack() == b.use_dual_stack()
        && a.endpoint() == b.endpoint()
        && a.force_path_style() == b.force_path_style()
        && a.accelerate() == b.accelerate()
        && a.use_global_endpoint() == b.use_global_endpoint()
        && a.use_object_lambda_endpoint() == b.use_object_lambda_endpoint()
        && a.disable_access_points() == b.disable_access_points()
        && a.disable_multi_region_access_points() == b.disable_multi_region_access_points()
        && a.use_arn_region() == b.use_arn_region()
        && a.use_s3_express_control_endpoint() == b.use_s3_express_control_endpoint()
        && a.disable_s3_express_session_auth() == b.disable_s3_express_session_auth()
}

impl ResolveEndpoint for KeyBlindCache {
    fn resolve_endpoint<'a>(&'a self, params: &'a Params) -> EndpointFuture<'a> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, endpoint)) = last.as_ref()
            && same_but_object(seen, params)
        {
            return EndpointFuture::ready(Ok(endpoint.clone()));
        }
        // The default resolver answers at once (its future is always ready).
        let resolved =
            futures::executor::block_on(ResolveEndpoint::resolve_endpoint(&self.rules, params));
        if let Ok(endpoint) = &resolved {
            *last = Some((params.clone(), endpoint.clone()));
        }
        EndpointFuture::ready(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use aws_sdk_s3::config::endpoint::ParamsBuilder;

    fn builder(endpoint: Option<&str>, path_style: bool, bucket: &str, key: &str) -> ParamsBuilder {
        Params::builder()
            .bucket(bucket)
            .region("eu-west-1")
            .set_endpoint(endpoint.map(str::to_string))
            .force_path_style(path_style)
            .key(key)
            .prefix("p/")
            .copy_source("other/k")
            .use_fips(false)
            .use_dual_stack(false)
            .accelerate(false)
            .use_global_endpoint(false)
            .use_object_lambda_endpoint(false)
            .disable_access_points(false)
            .disable_multi_region_access_points(false)
            .use_arn_region(true)
            .use_s3_express_control_endpoint(false)
            .disable_s3_express_session_auth(false)
    }

    fn params(endpoint: Option<&str>, path_style: bool, bucket: &str, key: &str) -> Params {
        builder(endpoint, path_style, bucket, key).build().unwrap()
    }

    fn resolve(r: &impl ResolveEndpoint, p: &Params) -> Endpoint {
        futures::executor::block_on(r.resolve_endpoint(p)).unwrap()
    }

    #[test]
    fn the_cache_compares_every_parameter_but_the_objects() {
        // A parameter added by a later SDK shows in Debug; if it is not compared above, a
        // request differing only in it would get the previous request's endpoint.
        let debug = format!("{:?}", params(None, false, "b", "k"));
        let mut fields: Vec<&str> = debug
            .split(['{', ','])
            .skip(1)
            .filter_map(|f| f.split(':').next())
            .map(str::trim)
            .filter(|f| !f.is_empty() && !f.contains('}'))
            .collect();
        fields.sort_unstable();
        let mut compared = vec![
            "accelerate",
            "bucket",
            "copy_source",
            "disable_access_points",
            "disable_multi_region_access_points",
            "disable_s3_express_session_auth",
            "endpoint",
            "force_path_style",
            "key",
            "prefix",
            "region",
            "use_arn_region",
            "use_dual_stack",
            "use_fips",
            "use_global_endpoint",
            "use_object_lambda_endpoint",
            "use_s3_express_control_endpoint",
        ];
        compared.sort_unstable();
        assert_eq!(
            fields, compared,
            "Params has changed: review same_but_object"
        );
    }

    #[test]
    fn a_change_in_any_parameter_but_the_objects_is_seen() {
        let base = || builder(Some("http://127.0.0.1:1"), true, "b", "k");
        let build = |b: ParamsBuilder| b.build().unwrap();
        let p = build(base());
        assert!(same_but_object(
            &p,
            &build(base().key("k2").prefix("q").copy_source("c"))
        ));
        let changed: [(&str, ParamsBuilder); 14] = [
            ("bucket", base().bucket("c")),
            ("region", base().region("us-east-1")),
            ("use_fips", base().use_fips(true)),
            ("use_dual_stack", base().use_dual_stack(true)),
            ("endpoint", base().endpoint("http://127.0.0.1:2")),
            ("force_path_style", base().force_path_style(false)),
            ("accelerate", base().accelerate(true)),
            ("use_global_endpoint", base().use_global_endpoint(true)),
            (
                "use_object_lambda_endpoint",
                base().use_object_lambda_endpoint(true),
            ),
            ("disable_access_points", base().disable_access_points(true)),
            (
                "disable_multi_region_access_points",
                base().disable_multi_region_access_points(true),
            ),
            ("use_arn_region", base().use_arn_region(false)),
            (
                "use_s3_express_control_endpoint",
                base().use_s3_express_control_endpoint(true),
            ),
            (
                "disable_s3_express_session_auth",
                base().disable_s3_express_session_auth(true),
            ),
        ];
        for (name, b) in changed {
            assert!(!same_but_object(&p, &build(b)), "{name} not compared");
        }
    }

    #[test]
    fn the_same_store_with_other_keys_gets_the_rules_answer() {
        let cache = KeyBlindCache::default();
        let rules = DefaultResolver::new();
        for (endpoint, path_style) in [
            (None, false),
            (None, true),
            (Some("http://127.0.0.1:3900"), true),
            (Some("https://minio.lan:9000"), false),
        ] {
            for key in ["Data/aa.xxh128", "Manifests/q/x_input", "a b+c%.bin"] {
                let p = params(endpoint, path_style, "farm-bucket", key);
                assert_eq!(
                    resolve(&cache, &p),
                    resolve(&rules, &p),
                    "{endpoint:?} {key}"
                );
            }
        }
    }

    #[test]
    fn another_bucket_or_endpoint_is_resolved_again() {
        let cache = KeyBlindCache::default();
        let a = resolve(
            &cache,
            &params(Some("http://127.0.0.1:1"), true, "one", "k"),
        );
        let b = resolve(
            &cache,
            &params(Some("http://127.0.0.1:1"), true, "two", "k"),
        );
        let c = resolve(
            &cache,
            &params(Some("http://127.0.0.1:2"), true, "two", "k"),
        );
        assert_eq!(a.url(), "http://127.0.0.1:1/one");
        assert_eq!(b.url(), "http://127.0.0.1:1/two");
        assert_eq!(c.url(), "http://127.0.0.1:2/two");
    }
}
