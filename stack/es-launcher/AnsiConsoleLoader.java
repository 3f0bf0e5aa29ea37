// Elasticsearch 9.x's server loads this class from lib/tools/ansi-console/ at every start. Elastic's
// (only in its distributions) returns a console when stdout is an ANSI terminal and null otherwise;
// the stack's servers always write to a log file, so this one always returns null.
package org.elasticsearch.io.ansi;

import java.util.function.Supplier;

public class AnsiConsoleLoader implements Supplier<Object> {
    @Override
    public Object get() {
        return null;
    }
}
