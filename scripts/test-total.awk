# Sums the `test result:` lines of `cargo test` output (one per test binary and doc-test run)
# into one total line, so that a long run ends with the number that matters:
#
#   total: 512 passed; 0 failed; 3 ignored (24 test runs)
#
# Used by scripts/test.sh; reads cargo test's stdout.
/^test result: / {
    runs++
    for (i = 1; i <= NF; i++) {
        n = $(i - 1) + 0
        if ($i ~ /^passed;?$/) passed += n
        else if ($i ~ /^failed;?$/) failed += n
        else if ($i ~ /^ignored;?$/) ignored += n
    }
}
END {
    if (runs == 0) {
        print "total: no test results (did the build fail?)"
    } else {
        printf "total: %d passed; %d failed; %d ignored (%d test run%s)\n", passed, failed, ignored, runs, (runs == 1 ? "" : "s")
    }
}
