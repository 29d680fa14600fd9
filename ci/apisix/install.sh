#!/bin/sh
# Installs mcp-bridge into an Apache APISIX tree: the commands of
# docs/mcp-bridge.md, Installation, one for one (keep the two in agreement).
#
#   ci/apisix/install.sh APISIX_HOME [PROJECT]
#
# APISIX_HOME is the directory holding APISIX's apisix/ and deps/ (for
# example /usr/local/apisix); PROJECT is this repository (default: the
# current directory), built with `cargo build --release`.
set -eu
APISIX_HOME=${1:?usage: $0 APISIX_HOME [PROJECT]}
cd "${2:-.}"

# The Lua code: the plugin over APISIX's own mcp-bridge.lua, and its modules
# beside APISIX's apisix/plugins/mcp/ (whose own files stay). bridge/ is
# replaced as a whole, so that no file of an older version is left.
rm -rf "$APISIX_HOME/apisix/plugins/mcp/bridge"
mkdir -p "$APISIX_HOME/apisix/plugins/mcp/bridge"
install -m 644 lua/apisix/plugins/mcp-bridge.lua "$APISIX_HOME/apisix/plugins/"
install -m 644 lua/apisix/plugins/mcp/*.lua "$APISIX_HOME/apisix/plugins/mcp/"
install -m 644 lua/apisix/plugins/mcp/bridge/*.lua "$APISIX_HOME/apisix/plugins/mcp/bridge/"

# The native module, renamed to the name Lua requires, and the host program
# beside it (where the plugin looks for it unless host_program says otherwise).
install -m 755 target/release/libmcp_bridge_native.so "$APISIX_HOME/deps/lib/lua/5.1/mcp_bridge_native.so"
install -m 755 target/release/mcp-bridge-host "$APISIX_HOME/deps/lib/lua/5.1/"
