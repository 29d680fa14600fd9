-- The one place that loads the native module (mcp_bridge_native.so), so a
-- missing or broken build is reported once, with what to do about it.
local pcall = pcall
local require = require

local ok, lib = pcall(require, "mcp_bridge_native")
if not ok then
    error("mcp-bridge: cannot load the native module mcp_bridge_native: " .. tostring(lib)
          .. " (build it with `cargo build --release` and put libmcp_bridge_native.so, "
          .. "renamed mcp_bridge_native.so or matched by lua_package_cpath \"lib?.so\", "
          .. "beside mcp-bridge-host)", 2)
end

return lib
