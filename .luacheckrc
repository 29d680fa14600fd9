std = "ngx_lua"
max_line_length = 100
unused_args = false
files["t/lua"] = { max_line_length = 110 }
