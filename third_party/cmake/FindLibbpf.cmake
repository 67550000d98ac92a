# FindLibbpf: libbpf (Debian 12: libbpf-dev 1.1). Defines Libbpf::bpf and
# LIBBPF_INCLUDE_DIR (which also holds bpf/bpf_helpers.h for BPF programs).
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(PC_LIBBPF QUIET libbpf)
endif()
find_path(LIBBPF_INCLUDE_DIR bpf/libbpf.h HINTS ${PC_LIBBPF_INCLUDE_DIRS})
find_library(LIBBPF_LIBRARY NAMES bpf HINTS ${PC_LIBBPF_LIBRARY_DIRS})
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Libbpf
  REQUIRED_VARS LIBBPF_LIBRARY LIBBPF_INCLUDE_DIR
  VERSION_VAR PC_LIBBPF_VERSION)
if(Libbpf_FOUND AND NOT TARGET Libbpf::bpf)
  add_library(Libbpf::bpf UNKNOWN IMPORTED)
  set_target_properties(Libbpf::bpf PROPERTIES
    IMPORTED_LOCATION "${LIBBPF_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${LIBBPF_INCLUDE_DIR}")
endif()
mark_as_advanced(LIBBPF_INCLUDE_DIR LIBBPF_LIBRARY)
