// Starts an Elasticsearch 9.x server assembled from Maven Central jars (stack/elasticsearch.sh).
//
// Elastic publishes no integ-test zip for 9.x, so there is no bin/elasticsearch and no server-cli.
// This does the part of that CLI the server depends on: the server JVM reads its arguments
// (org.elasticsearch.bootstrap.ServerArgs, in Elasticsearch's stream format) from its stdin, prints
// BootstrapInfo.SERVER_READY_MARKER on stderr once started, and shuts down cleanly when
// SERVER_SHUTDOWN_MARKER arrives on stdin (it exits at once if stdin closes). The JVM options are
// the caller's (the script computes them).
//
// Usage: java -cp '<es>/lib/*:<dir of this class>' EsLauncher PIDFILE CONFIG_DIR LOGS_DIR \
//          [setting=value ...] -- JAVA [jvm options ...] -m org.elasticsearch.server/...
// SIGTERM to this process: the server is asked to stop and this exits with its exit code.

import org.elasticsearch.bootstrap.BootstrapInfo;
import org.elasticsearch.bootstrap.ServerArgs;
import org.elasticsearch.common.io.stream.OutputStreamStreamOutput;
import org.elasticsearch.common.settings.KeyStoreWrapper;
import org.elasticsearch.common.settings.Settings;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

public final class EsLauncher {
    public static void main(String[] argv) throws Exception {
        int sep = Arrays.asList(argv).indexOf("--");
        if (sep < 3 || sep == argv.length - 1) {
            System.err.println("usage: EsLauncher PIDFILE CONFIG_DIR LOGS_DIR [k=v ...] -- COMMAND ...");
            System.exit(2);
        }
        Settings.Builder settings = Settings.builder();
        for (int i = 3; i < sep; i++) {
            int eq = argv[i].indexOf('=');
            if (eq <= 0) throw new IllegalArgumentException("setting without '=': " + argv[i]);
            settings.put(argv[i].substring(0, eq), argv[i].substring(eq + 1));
        }
        List<String> command = new ArrayList<>(Arrays.asList(argv).subList(sep + 1, argv.length));

        // No keystore file: an empty in-memory one (what the CLI creates on a first start, less the file).
        KeyStoreWrapper secrets = KeyStoreWrapper.create();
        ServerArgs args = new ServerArgs(
            false, false, Path.of(argv[0]), secrets, settings.build(), Path.of(argv[1]), Path.of(argv[2]));

        ProcessBuilder pb = new ProcessBuilder(command);
        pb.redirectOutput(ProcessBuilder.Redirect.INHERIT);
        Process server = pb.start();
        Thread pump = new Thread(() -> pumpStderr(server.getErrorStream()), "stderr-pump");
        pump.start();

        OutputStream stdin = server.getOutputStream();  // kept open: closing it stops the server
        try {
            OutputStreamStreamOutput out = new OutputStreamStreamOutput(stdin);
            args.writeTo(out);
            out.flush();
        } catch (IOException e) {
            // The server died before reading its arguments; its stderr (pumped) says why.
        }

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            if (server.isAlive()) {
                try {
                    stdin.write(BootstrapInfo.SERVER_SHUTDOWN_MARKER);
                    stdin.flush();
                } catch (IOException e) {
                    // already gone
                }
                try {
                    server.waitFor();
                    pump.join(5000);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
        }, "shutdown"));

        int code = server.waitFor();
        pump.join(5000);
        System.exit(code);
    }

    /** Copies the server's stderr to ours, dropping the ready marker (logged as a line instead). */
    private static void pumpStderr(InputStream err) {
        byte[] buf = new byte[8192];
        try {
            int n;
            while ((n = err.read(buf)) > 0) {
                int w = 0;
                for (int i = 0; i < n; i++) {
                    if (buf[i] == BootstrapInfo.SERVER_READY_MARKER) {
                        System.err.write(buf, w, i - w);
                        System.err.print("[es-launcher] server ready");
                        w = i + 1;
                    }
                }
                System.err.write(buf, w, n - w);
                System.err.flush();
            }
        } catch (IOException e) {
            // the server exited
        }
    }
}
