# Finds Eigen >= 3.4: a system, conda or user-given Eigen first, then the headers of the cmeel-eigen wheel.
# Sets FASTBPTT_EIGEN_SOURCE to say which one was taken (reported by fastbptt.build_info()).

find_package(Eigen3 3.4 CONFIG QUIET)
if(Eigen3_FOUND)
  set(FASTBPTT_EIGEN_SOURCE "system (${Eigen3_DIR})")
else()
  # The cmeel-eigen wheel installs a CMake package under <site-packages>/cmeel.prefix, which CMake does not
  # search by itself. scikit-build-core puts the build environment's site-packages on CMAKE_PREFIX_PATH.
  set(_fastbptt_cmeel_prefixes "")
  foreach(_prefix IN LISTS CMAKE_PREFIX_PATH)
    list(APPEND _fastbptt_cmeel_prefixes "${_prefix}/cmeel.prefix")
  endforeach()
  # Also the site-packages of a Python interpreter (-DPython_EXECUTABLE=... picks one), for plain CMake builds.
  if(NOT Python_EXECUTABLE)
    find_package(Python 3 QUIET COMPONENTS Interpreter)
  endif()
  if(Python_EXECUTABLE)
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"
      OUTPUT_VARIABLE _fastbptt_purelib OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(_fastbptt_purelib)
      list(APPEND _fastbptt_cmeel_prefixes "${_fastbptt_purelib}/cmeel.prefix")
    endif()
  endif()
  unset(Eigen3_DIR CACHE)
  find_package(Eigen3 3.4 CONFIG QUIET PATHS ${_fastbptt_cmeel_prefixes} NO_DEFAULT_PATH)
  if(Eigen3_FOUND)
    set(FASTBPTT_EIGEN_SOURCE "cmeel-eigen wheel (${Eigen3_DIR})")
  endif()
endif()

if(NOT Eigen3_FOUND)
  message(FATAL_ERROR
    "fastbptt needs Eigen >= 3.4 and found none.\n"
    "  - pip builds get it from the build requirement cmeel-eigen: use a plain 'pip install .' (build isolation on),\n"
    "    or 'pip install cmeel-eigen' into the environment used by --no-build-isolation;\n"
    "  - or install a system Eigen (Debian/Ubuntu: apt-get install libeigen3-dev; conda: conda install eigen);\n"
    "  - or point CMake at one with -DEigen3_ROOT=<prefix> or -DEigen3_DIR=<dir holding Eigen3Config.cmake>.")
endif()
message(STATUS "fastbptt: Eigen ${Eigen3_VERSION} from ${FASTBPTT_EIGEN_SOURCE}")
