-- Minimal JSON encoding for the few values mcp-bridge writes itself
-- (error bodies and the spawn request). Written by hand because Debian's
-- lua-cjson cannot tell an empty array from an empty object and escapes
-- every "/".
local new_memo = require("apisix.plugins.mcp.bridge.memo").new

local byte = string.byte
local concat = table.concat
local find = string.find
local format = string.format
local gsub = string.gsub
local ipairs = ipairs
local pairs = pairs
local sort = table.sort
local floor = math.floor
local huge = math.huge
local tonumber = tonumber
local tostring = tostring
local type = type

local _M = {}

local ESCAPES = {
    ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
    ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}

local function escape_char(c)
    return ESCAPES[c] or format("\\u%04x", byte(c))
end

local function encode_string(s)
    if not find(s, '[%c"\\]') then
        return '"' .. s .. '"'
    end
    return '"' .. gsub(s, '[%c"\\]', escape_char) .. '"'
end

-- Short strings (header values every request of a client repeats) are
-- encoded once.
local MAX_KEPT_LEN = 128
local encoded = new_memo(256)

function _M.string(s)
    if #s > MAX_KEPT_LEN then
        return encode_string(s)
    end
    return encoded:get(s) or encoded:set(s, encode_string(s))
end

function _M.array_of_strings(list)
    local parts = {}
    for i, s in ipairs(list) do
        parts[i] = _M.string(s)
    end
    return "[" .. concat(parts, ",") .. "]"
end

-- Keys sorted, so the same table always encodes the same way.
function _M.object_of_strings(map)
    local keys = {}
    for k in pairs(map) do
        keys[#keys + 1] = k
    end
    sort(keys)
    local parts = {}
    for i, k in ipairs(keys) do
        parts[i] = _M.string(k) .. ":" .. _M.string(map[k])
    end
    return "{" .. concat(parts, ",") .. "}"
end

-- Any value made of tables, strings, numbers and booleans: a table with
-- keys 1..n is an array, any other table an object (keys sorted). For
-- reports, not for hot paths.
function _M.value(v)
    local t = type(v)
    if t == "string" then
        return _M.string(v)
    elseif t == "number" then
        if v ~= v or v == huge or v == -huge then
            return "null"
        end
        return v == floor(v) and format("%d", v) or format("%.17g", v)
    elseif t == "boolean" then
        return tostring(v)
    elseif t ~= "table" then
        return "null"
    end
    local n = #v
    local keys = {}
    for k in pairs(v) do
        keys[#keys + 1] = k
    end
    local parts = {}
    if n > 0 and #keys == n then
        for i = 1, n do
            parts[i] = _M.value(v[i])
        end
        return "[" .. concat(parts, ",") .. "]"
    end
    for i, k in ipairs(keys) do
        keys[i] = tostring(k)
    end
    sort(keys)
    for i, k in ipairs(keys) do
        local item = v[k]
        if item == nil then
            item = v[tonumber(k)]
        end
        parts[i] = _M.string(k) .. ":" .. _M.value(item)
    end
    return "{" .. concat(parts, ",") .. "}"
end

function _M.integer(n)
    if type(n) ~= "number" then
        return nil, "not a number"
    end
    return format("%d", n)
end

return _M
