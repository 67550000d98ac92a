# FindBoringSSL: locate BoringSSL (never OpenSSL).
#
# Debian 12 ships BoringSSL as android-libboringssl-dev: headers under
# /usr/include/android, libraries under /usr/lib/<triplet>/android. A
# self-built BoringSSL is found with -DBORINGSSL_ROOT=DIR (DIR/include and
# DIR/lib or DIR/build).
#
# Defines BoringSSL_FOUND, BORINGSSL_INCLUDE_DIR, BORINGSSL_LIBRARY_DIR and the
# imported targets BoringSSL::ssl and BoringSSL::crypto.

set(_bssl_inc_hints)
set(_bssl_lib_hints)
if(BORINGSSL_ROOT)
  list(APPEND _bssl_inc_hints "${BORINGSSL_ROOT}/include")
  list(APPEND _bssl_lib_hints "${BORINGSSL_ROOT}/lib" "${BORINGSSL_ROOT}/build"
       "${BORINGSSL_ROOT}/build/ssl" "${BORINGSSL_ROOT}/build/crypto")
  set(_bssl_no_default NO_DEFAULT_PATH)
else()
  list(APPEND _bssl_inc_hints /usr/include/android)
  list(APPEND _bssl_lib_hints /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/android
       /usr/lib/x86_64-linux-gnu/android /usr/lib/aarch64-linux-gnu/android)
  set(_bssl_no_default NO_DEFAULT_PATH)
endif()

find_path(BORINGSSL_INCLUDE_DIR openssl/base.h HINTS ${_bssl_inc_hints} ${_bssl_no_default})
find_library(BORINGSSL_SSL_LIBRARY NAMES ssl HINTS ${_bssl_lib_hints} ${_bssl_no_default})
find_library(BORINGSSL_CRYPTO_LIBRARY NAMES crypto HINTS ${_bssl_lib_hints} ${_bssl_no_default})

# openssl/base.h exists in OpenSSL 3 too; BoringSSL alone defines
# BORINGSSL_API_VERSION, so insist on it.
if(BORINGSSL_INCLUDE_DIR)
  file(STRINGS "${BORINGSSL_INCLUDE_DIR}/openssl/base.h" _bssl_api
       REGEX "^#define BORINGSSL_API_VERSION")
  if(NOT _bssl_api)
    message(STATUS "openssl/base.h in ${BORINGSSL_INCLUDE_DIR} is not BoringSSL")
    set(BORINGSSL_INCLUDE_DIR BORINGSSL_INCLUDE_DIR-NOTFOUND)
  endif()
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(BoringSSL
  REQUIRED_VARS BORINGSSL_SSL_LIBRARY BORINGSSL_CRYPTO_LIBRARY BORINGSSL_INCLUDE_DIR)

if(BoringSSL_FOUND)
  get_filename_component(BORINGSSL_LIBRARY_DIR "${BORINGSSL_SSL_LIBRARY}" DIRECTORY)
  if(NOT TARGET BoringSSL::crypto)
    add_library(BoringSSL::crypto UNKNOWN IMPORTED)
    set_target_properties(BoringSSL::crypto PROPERTIES
      IMPORTED_LOCATION "${BORINGSSL_CRYPTO_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${BORINGSSL_INCLUDE_DIR}")
  endif()
  if(NOT TARGET BoringSSL::ssl)
    add_library(BoringSSL::ssl UNKNOWN IMPORTED)
    set_target_properties(BoringSSL::ssl PROPERTIES
      IMPORTED_LOCATION "${BORINGSSL_SSL_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${BORINGSSL_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES BoringSSL::crypto)
  endif()
endif()
mark_as_advanced(BORINGSSL_INCLUDE_DIR BORINGSSL_SSL_LIBRARY BORINGSSL_CRYPTO_LIBRARY)
