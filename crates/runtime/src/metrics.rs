//! Counter names. Every counter a stage or the runtime writes per decision is named here.

/// Counter name for a decision of the stage `name`, on a named route or not.
pub fn counter_name(name: &str, decision: &str, route: Option<&str>, reason: Option<&str>) -> String {
    let mut out = format!("meshward_{name}_{decision}_total");
    if let Some(route) = route {
        out.push_str(".route.");
        out.push_str(route);
    }
    if let Some(reason) = reason {
        out.push_str(".reason.");
        out.push_str(reason);
    }
    out
}
