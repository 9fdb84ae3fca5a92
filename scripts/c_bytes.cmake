# c_bytes(FILE HEX_VAR LEN_VAR): the bytes of FILE as the body of a C array initializer
# ("0x2f,0x2a,...", 16 a line) in HEX_VAR and their count in LEN_VAR. The one encoder of
# the build's embedded files: scripts/embed.cmake (a generated binary file) and
# scripts/embed_assets.cmake (the web console) include it.
function(c_bytes file hex_var len_var)
  file(READ "${file}" hex HEX)
  string(LENGTH "${hex}" n)
  math(EXPR n "${n} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
  string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)"
         "\\1\n" hex "${hex}")
  set(${hex_var} "${hex}" PARENT_SCOPE)
  set(${len_var} ${n} PARENT_SCOPE)
endfunction()
