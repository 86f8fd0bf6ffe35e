//! Test-only: a filter whose VM fails when a request carries `x-crash`. meshward's own filters
//! never panic (clippy denies it and fuzzing looks for it); this module stands in for "the VM
//! failed anyway" so the tests can show what Envoy's `failure_policy` then does with traffic.
#![allow(clippy::panic)]

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(CrashOnDemand) });
}}

struct CrashOnDemand;

impl Context for CrashOnDemand {}

impl HttpContext for CrashOnDemand {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header("x-crash").is_some() {
            panic!("crash requested by the test");
        }
        Action::Continue
    }
}
