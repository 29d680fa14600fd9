-- Cluster mode: session ids that name the node owning the session.
--
-- A backend cannot move, so every request of a session must reach the node
-- that runs it. In cluster mode a session id is the host's id followed by
-- the owner's address and a MAC made with the cluster secret:
--
--   <host id, 48 hex>-<owner address, hex>-<MAC, 32 hex>
--
-- The address is believed only when the MAC holds: a client can never make
-- a node connect to an address of its choosing. The MAC also covers the
-- cluster's name, so an id of another cluster (another secret or name) is
-- refused like a forged one.
local byte = string.byte
local char = string.char
local concat = table.concat
local format = string.format
local gsub = string.gsub
local hmac_sha1 = ngx.hmac_sha1
local match = string.match
local require = require
local sub = string.sub
local tonumber = tonumber
local type = type

local _M = {
    MIN_SECRET_BYTES = 16,
}

local HOST_ID_LEN = 48
local MAC_HEX = 32
-- "host:port" of at most 255 bytes, in hex.
local MAX_ADDRESS_HEX = 510
local STATE_TAG = "^([0-9a-f]+)%-(" .. string.rep("[0-9a-f]", MAC_HEX) .. ")~(.*)$"
local TAGGED_ID = "^(" .. string.rep("[0-9a-f]", HOST_ID_LEN) .. ")%-([0-9a-f]+)%-("
                  .. string.rep("[0-9a-f]", MAC_HEX) .. ")$"

local settings
local own_address, own_tag_prefix
local own_state_prefix = ""

local HEX = {}
for i = 0, 255 do
    HEX[i] = format("%02x", i)
end

local function to_hex(s, n)
    local out = {}
    for i = 1, n or #s do
        out[i] = HEX[byte(s, i)]
    end
    return concat(out)
end

local function from_hex(h)
    return (gsub(h, "%x%x", function(pair)
        return char(tonumber(pair, 16))
    end))
end

local function mac(host_id, address)
    return to_hex(hmac_sha1(settings.secret, settings.name .. "\n" .. host_id .. "\n" .. address),
                  MAC_HEX / 2)
end

-- The MAC of a node's tag on input_required states (see state_prefix).
local function node_mac(address)
    return mac("node", address)
end

local function is_address(s)
    return type(s) == "string" and #s <= MAX_ADDRESS_HEX / 2
           and (match(s, "^[%w%.%-]+:%d+$") or match(s, "^%[[%x:%.]+%]:%d+$")) ~= nil
end

-- Checks the `cluster` settings: the secret here, the rest by the registry
-- (which fills in the defaults). Returns what the registry made of them
-- (true for none), or nil and what is wrong.
function _M.check(c)
    if c == nil then
        return true
    end
    if type(c) == "table" and (type(c.secret) ~= "string" or #c.secret < _M.MIN_SECRET_BYTES) then
        return nil, "cluster.secret must be at least " .. _M.MIN_SECRET_BYTES .. " bytes"
    end
    -- Required here, not at load: config.lua loads this module and is read
    -- outside nginx too (the schema's defaults, tests/defaults.rs), where
    -- the registry's Redis client cannot load.
    local checked, err = require("apisix.plugins.mcp.bridge.registry").check(c)
    if not checked then
        return nil, err
    end
    if not is_address(checked.address) then
        return nil, "cluster.node_address is longer than a session id may carry"
    end
    return checked
end

-- Takes the `cluster` settings (nil: cluster mode off). Returns true, or
-- nil and what is wrong (cluster mode is off then).
function _M.configure(c)
    settings, own_address, own_tag_prefix, own_state_prefix = nil, nil, nil, ""
    local checked, err = _M.check(c)
    if not checked or c == nil then
        return checked, err
    end
    settings = { name = checked.name, node_address = checked.address, secret = c.secret,
                 redis = c.redis, lease_ms = checked.lease_ms }
    own_address = c.node_address
    own_tag_prefix = "-" .. to_hex(own_address) .. "-"
    own_state_prefix = to_hex(own_address) .. "-" .. node_mac(own_address) .. "~"
    return true
end

-- What the host puts before the requestState of a stateless call that
-- waits for its client's input: this node's address and its MAC, so that
-- the retry can reach this node from any other ("" outside cluster mode).
function _M.state_prefix()
    return own_state_prefix
end

-- Where the call of a retry's `state` waits:
--   "local", <the state after the node's tag>   here (or cluster mode is off)
--   "remote", <owner address>                   on another node
--   nil                                         a forged or foreign tag
function _M.resolve_state(state)
    if not settings then
        return "local", state
    end
    local address_hex, given, rest = match(state, STATE_TAG)
    if not address_hex or #address_hex % 2 ~= 0 then
        return nil
    end
    local address = from_hex(address_hex)
    if not is_address(address) or node_mac(address) ~= given then
        return nil
    end
    if address == own_address then
        return "local", rest
    end
    return "remote", address
end

function _M.enabled()
    return settings ~= nil
end

-- The settings in force (name, node_address, redis, lease_ms, secret), or nil.
function _M.settings()
    return settings
end

-- The id clients get for the host's session `host_id`.
function _M.tag(host_id)
    if not settings then
        return host_id
    end
    return host_id .. own_tag_prefix .. mac(host_id, own_address)
end

-- Where the session of a client's `id` lives:
--   "local", <the host's id>     on this node (or cluster mode is off)
--   "remote", <owner address>    on another node of this cluster
--   nil                          nowhere: malformed, forged or foreign
function _M.resolve(id)
    if not settings then
        return "local", id
    end
    if #id <= HOST_ID_LEN + MAC_HEX + 2 or #id > HOST_ID_LEN + MAX_ADDRESS_HEX + MAC_HEX + 2 then
        return nil
    end
    local host_id, address_hex, given = match(id, TAGGED_ID)
    if not host_id or #address_hex % 2 ~= 0 then
        return nil
    end
    local address = from_hex(address_hex)
    if not is_address(address) or mac(host_id, address) ~= given then
        return nil
    end
    if address == own_address then
        return "local", host_id
    end
    return "remote", address
end

-- What a node puts in the header of a request it forwards: its address and
-- a MAC of it. The owner checked nothing of the client's (Host, Origin)
-- that the forwarder, with the same settings, did not check already; only
-- a node of the cluster can make it, so a client cannot use it to skip
-- those checks.
function _M.forwarded_mark()
    if not settings then
        return nil
    end
    return own_address .. " " .. mac("forwarded", own_address)
end

-- Whether `mark` (a forwarded request's header) was made by a node of this
-- cluster.
function _M.is_forwarded(mark)
    if not settings or type(mark) ~= "string" then
        return false
    end
    local address, given = match(mark, "^(%S+) (%x+)$")
    return address ~= nil and is_address(address) and mac("forwarded", address) == given
end

-- The host's id within a client's id, without any check (for ids this
-- node handed out itself, such as the session a DELETE just ended).
function _M.host_id(id)
    return sub(id, 1, HOST_ID_LEN)
end

return _M
