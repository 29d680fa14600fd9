-- Answers worked out once per worker from a string a client sends again
-- and again (a Host, a session id, a header value), kept up to a bound and
-- then forgotten all at once, so a client sending endless new strings
-- costs memory that stays bounded.
local setmetatable = setmetatable

local _M = {}
local Memo = {}
Memo.__index = Memo

-- A memo of at most `max` answers.
function _M.new(max)
    return setmetatable({ answers = {}, count = 0, max = max }, Memo)
end

-- The answer kept for `key`, or nil.
function Memo:get(key)
    return self.answers[key]
end

-- Keeps `answer` (not nil) for `key`, and returns it.
function Memo:set(key, answer)
    if self.count >= self.max then
        self.answers, self.count = {}, 0
    end
    self.answers[key] = answer
    self.count = self.count + 1
    return answer
end

return _M
