# embed.cmake: turns IN (a text file) into OUT, a C header defining `cs__shops_page`, the file's
# bytes as a NUL-terminated char array (cmake -P; no xxd needed).
file(READ ${IN} hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
file(WRITE ${OUT} "/* generated from ${IN} by net/embed.cmake: do not edit */\n"
                  "static const char cs__shops_page[] = {${body}0x00};\n")
