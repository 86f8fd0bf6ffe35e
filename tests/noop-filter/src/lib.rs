//! Bench-only: a filter that lets every request through without reading anything. What it
//! costs is what any proxy-wasm filter costs in Envoy (a VM, a context per request, the
//! callbacks crossing into V8): the floor `make bench` compares every meshward module with.
//!
//! Configured with `{"repeat": {"<hostcall>": N, ...}}` it makes each named hostcall N times
//! per request instead, so `make bench`'s hostcall rows measure what one hostcall costs in
//! Envoy (N large enough to stand out of the noise): `headers` (all request headers),
//! `header` (one request header), `time`, `set_property`, `get_property`, `metric`,
//! `shared_get`, `shared_set`, `set_header`.
//!
//! With `{"read_body": true}` it buffers the request body and reads it once, whole: the floor
//! for the filters that check bodies (schema, webhook, idempotency).

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { repeat: Rc::new(Vec::new()), read_body: false }) });
}}

/// Hostcalls to make per request, with their counts.
type Repeat = Rc<Vec<(String, u32)>>;

struct Root {
    repeat: Repeat,
    read_body: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&config) else {
            return config.is_empty();
        };
        let repeat = value.get("repeat").and_then(|r| r.as_object()).map(|r| {
            r.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
                    )
                })
                .collect()
        });
        self.repeat = Rc::new(repeat.unwrap_or_default());
        self.read_body = value.get("read_body").and_then(serde_json::Value::as_bool).unwrap_or(false);
        if self
            .repeat
            .iter()
            .any(|(k, _)| k == "shared_get" || k == "shared_set")
        {
            let _ = hostcalls::set_shared_data("noop/slot", Some(&[0u8; 384]), None);
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop {
            repeat: Rc::clone(&self.repeat),
            read_body: self.read_body,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop {
    repeat: Repeat,
    read_body: bool,
}

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for (call, times) in self.repeat.iter() {
            for i in 0..*times {
                match call.as_str() {
                    "headers" => {
                        let _ = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
                    }
                    "header" => {
                        let _ = hostcalls::get_map_value_bytes(
                            MapType::HttpRequestHeaders,
                            "authorization",
                        );
                    }
                    "time" => {
                        let _ = hostcalls::get_current_time();
                    }
                    "set_property" => {
                        let _ = hostcalls::set_property(vec!["noop.state"], Some(&[b'x'; 300]));
                    }
                    "get_property" => {
                        let _ = hostcalls::get_property(vec!["source", "address"]);
                    }
                    "metric" => {
                        if let Ok(id) = hostcalls::define_metric(MetricType::Counter, "noop_total")
                        {
                            let _ = hostcalls::increment_metric(id, 1);
                        }
                    }
                    "shared_get" => {
                        let _ = hostcalls::get_shared_data("noop/slot");
                    }
                    "shared_set" => {
                        let _ = hostcalls::set_shared_data("noop/slot", Some(&[0u8; 384]), None);
                    }
                    "set_header" => {
                        let _ = hostcalls::set_map_value(
                            MapType::HttpRequestHeaders,
                            "x-noop",
                            Some(if i % 2 == 0 { "a" } else { "b" }),
                        );
                    }
                    _ => {}
                }
            }
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.read_body {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let _ = hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpRequestBody, 0, body_size);
        Action::Continue
    }
}
