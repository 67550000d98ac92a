# Run one libFuzzer target for a bounded time over a copy of its seed corpus.
#   cmake -DFUZZER=exe -DSEEDS=dir -DWORK=dir -DSECONDS=n [-DDICT=file]
#         -P run_fuzzer.cmake
# WORK is recreated from SEEDS on every run (the source tree is never written);
# crash, leak and timeout inputs land in WORK/artifacts/.
foreach(var FUZZER SEEDS WORK SECONDS)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_fuzzer.cmake: ${var} not set")
  endif()
endforeach()

file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}/corpus" "${WORK}/artifacts")
file(GLOB seeds "${SEEDS}/*")
if(NOT seeds)
  message(FATAL_ERROR "no seed corpus in ${SEEDS}")
endif()
file(COPY ${seeds} DESTINATION "${WORK}/corpus")

set(dict_arg)
if(DICT)
  set(dict_arg "-dict=${DICT}")
endif()

execute_process(
  COMMAND "${FUZZER}" "${WORK}/corpus" ${dict_arg}
          -max_total_time=${SECONDS} -timeout=10
          -print_final_stats=1 -artifact_prefix=${WORK}/artifacts/
  WORKING_DIRECTORY "${WORK}"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  file(GLOB found "${WORK}/artifacts/*")
  message(FATAL_ERROR "${FUZZER} failed (${rc}); inputs: ${found}")
endif()
