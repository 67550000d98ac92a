# Steering.cmake - the SO_REUSEPORT steering program (core/steer.bpf.c):
# compiled with clang -target bpf, embedded into dotproxy as a C array
# (steer_obj.c), loaded with libbpf at start (core/steer.c).
#
# DP_STEERING=ON (default) builds it when libbpf and a clang that targets
# BPF are found, and otherwise warns and builds the stub (steering then
# reports "unavailable" at start, as it does with -DDP_STEERING=OFF).
# Sets DP_STEERING_BUILT.

set(DP_STEERING_BUILT OFF)
if(NOT DP_STEERING)
  return()
endif()

find_package(Libbpf)
find_program(DP_BPF_CLANG NAMES clang clang-16 clang-15 clang-14)
find_program(DP_LLVM_STRIP NAMES llvm-strip llvm-strip-16 llvm-strip-15 llvm-strip-14)
if(NOT Libbpf_FOUND OR NOT DP_BPF_CLANG)
  message(WARNING "DP_STEERING: libbpf (libbpf-dev) or clang not found: building without "
                  "the steering program (queries are handed to their home shard)")
  return()
endif()

# <linux/bpf.h> pulls <asm/types.h>, which Debian keeps under the multiarch
# directory that clang -target bpf does not search by itself.
set(dp_bpf_flags -O2 -g -target bpf -mcpu=v3 -Wall
    -I${CMAKE_CURRENT_SOURCE_DIR}/core -I${LIBBPF_INCLUDE_DIR})
if(CMAKE_LIBRARY_ARCHITECTURE AND EXISTS /usr/include/${CMAKE_LIBRARY_ARCHITECTURE})
  list(APPEND dp_bpf_flags -I/usr/include/${CMAKE_LIBRARY_ARCHITECTURE})
endif()

# Can this clang build a BPF program against these headers at all?
set(dp_probe ${CMAKE_CURRENT_BINARY_DIR}/steer_probe.bpf.c)
file(WRITE ${dp_probe} "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
     "SEC(\"sk_reuseport\") int p(struct sk_reuseport_md *c) { return SK_PASS; }\n")
execute_process(COMMAND ${DP_BPF_CLANG} ${dp_bpf_flags} -c ${dp_probe} -o ${dp_probe}.o
                RESULT_VARIABLE dp_probe_rc OUTPUT_QUIET ERROR_VARIABLE dp_probe_err)
if(NOT dp_probe_rc EQUAL 0)
  message(WARNING "DP_STEERING: ${DP_BPF_CLANG} cannot compile for -target bpf "
                  "(${dp_probe_err}): building without the steering program")
  return()
endif()

set(dp_bpf_obj ${CMAKE_CURRENT_BINARY_DIR}/steer.bpf.o)
set(dp_bpf_c ${CMAKE_CURRENT_BINARY_DIR}/steer_obj.c)
# DWARF is dropped (the BTF that libbpf needs for the maps stays): the
# embedded object is a few kilobytes.
if(DP_LLVM_STRIP)
  set(dp_strip COMMAND ${DP_LLVM_STRIP} -g ${dp_bpf_obj})
else()
  set(dp_strip)
endif()
add_custom_command(OUTPUT ${dp_bpf_obj}
  COMMAND ${DP_BPF_CLANG} ${dp_bpf_flags} -c ${CMAKE_CURRENT_SOURCE_DIR}/core/steer.bpf.c
          -o ${dp_bpf_obj}
  ${dp_strip}
  DEPENDS core/steer.bpf.c core/steer_prog.h
  COMMENT "Compiling the steering program (clang -target bpf)" VERBATIM)
add_custom_command(OUTPUT ${dp_bpf_c}
  COMMAND ${CMAKE_COMMAND} -DIN=${dp_bpf_obj} -DOUT=${dp_bpf_c} -DNAME=dp_steer_obj
          -P ${CMAKE_CURRENT_SOURCE_DIR}/cmake/embed.cmake
  DEPENDS ${dp_bpf_obj} cmake/embed.cmake
  COMMENT "Embedding the steering program" VERBATIM)

set(DP_STEERING_BUILT ON)
