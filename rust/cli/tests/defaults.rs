//! The defaults `mcp-bridge serve --help` shows for route fields are
//! config.lua's: the gateway writes only the options given into its route,
//! so config.lua's schema applies the rest, and the help must not tell
//! another story. Reads the schema with LuaJIT (Debian's `luajit2`).

use std::collections::BTreeMap;
use std::process::Command;

const CLI: &str = env!("CARGO_BIN_EXE_mcp-bridge");

/// Prints `field<TAB>default` for every schema field with a scalar default.
const SCRIPT: &str = r#"
package.path = os.getenv("MCP_BRIDGE_LUA") .. "/?.lua;" .. package.path
ngx = {}
local config = require("apisix.plugins.mcp.bridge.config")
for name, spec in pairs(config.schema.properties) do
    if spec.default ~= nil and type(spec.default) ~= "table" then
        print(name .. "\t" .. tostring(spec.default))
    end
end
"#;

/// Prints the name of every member of `limits` (which have no defaults:
/// one not given is the host's own limit).
const LIMITS_SCRIPT: &str = r#"
package.path = os.getenv("MCP_BRIDGE_LUA") .. "/?.lua;" .. package.path
ngx = {}
local config = require("apisix.plugins.mcp.bridge.config")
for name in pairs(config.schema.properties.limits.properties) do
    print(name)
end
"#;

fn luajit(script: &str) -> String {
    let lua = concat!(env!("CARGO_MANIFEST_DIR"), "/../../lua");
    let out = Command::new("luajit")
        .args(["-e", script])
        .env("MCP_BRIDGE_LUA", lua)
        .output()
        .unwrap_or_else(|e| panic!("cannot run luajit ({e}): install it with `apt-get install luajit2`"));
    assert!(out.status.success(), "luajit: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn schema_defaults() -> BTreeMap<String, String> {
    let text = luajit(SCRIPT);
    let defaults: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(name, value)| {
            let shown = match value {
                "false" => "off",
                "true" => "on",
                v => v,
            };
            (name.to_string(), shown.to_string())
        })
        .collect();
    assert!(defaults.contains_key("max_sessions"), "no defaults read from config.lua: {text}");
    defaults
}

/// Each option of the help, with the text of its description (continuation
/// lines included).
fn usage_options() -> BTreeMap<String, String> {
    let out = Command::new(CLI).args(["serve", "--help"]).output().expect("run mcp-bridge");
    let usage = String::from_utf8(out.stdout).expect("UTF-8");
    let mut options: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in usage.lines() {
        if let Some(rest) = line.strip_prefix("  --") {
            let name = format!("--{}", rest.split_whitespace().next().unwrap_or_default());
            // --env appears twice (KEY=VALUE, KEY): one text.
            options.entry(name.clone()).or_default().push_str(line);
            current = Some(name);
        } else if line.starts_with("       ") {
            if let Some(name) = &current {
                options.entry(name.clone()).or_default().push_str(line);
            }
        } else {
            current = None;
        }
    }
    options
}

/// The last `[...]` of an option's description: its default.
fn bracketed(text: &str) -> Option<&str> {
    let open = text.rfind('[')?;
    let close = text[open..].find(']')? + open;
    Some(&text[open + 1..close])
}

#[test]
fn the_defaults_the_help_shows_are_config_luas() {
    let options = usage_options();
    let mut drift = Vec::new();
    for (field, default) in schema_defaults() {
        // The gateway serves under /mcp by choice; a route's default ("")
        // is the whole server.
        if field == "base_uri" {
            continue;
        }
        let option = format!("--{}", field.replace('_', "-"));
        match options.get(&option).map(|text| bracketed(text)) {
            None => drift.push(format!("config.lua's {field} (default {default}) has no {option} in the help")),
            Some(shown) if shown != Some(default.as_str()) => {
                drift.push(format!("{option} shows [{}], config.lua's default is {default}", shown.unwrap_or("")))
            }
            Some(_) => {}
        }
    }
    assert!(drift.is_empty(), "the help and config.lua disagree:\n{}", drift.join("\n"));
}

#[test]
fn every_limit_has_an_option_and_none_has_a_default_but_the_hosts() {
    let options = usage_options();
    let limits = luajit(LIMITS_SCRIPT);
    let names: Vec<&str> = limits.lines().collect();
    assert!(names.contains(&"cpu_seconds"), "no limits read from config.lua: {limits}");
    for name in names {
        let option = format!("--limit-{}", name.replace('_', "-"));
        let text =
            options.get(&option).unwrap_or_else(|| panic!("config.lua's limits.{name} has no {option} in the help"));
        let shown = bracketed(text).unwrap_or_default();
        assert!(shown.starts_with("inherited"), "{option} shows [{shown}]: a limit not given is the host's own");
    }
}

#[test]
fn a_changed_default_is_noticed() {
    // The comparison itself: a help that shows another number is drift.
    assert_eq!(bracketed("  --max-sessions N              live sessions per worker [100]"), Some("100"));
    assert_eq!(bracketed("  --x  a [b] then [c]"), Some("c"));
    assert_eq!(bracketed("  --cwd DIR   backend working directory"), None);
}
