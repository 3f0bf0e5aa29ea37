// The Java agent that Elasticsearch 9.x attaches to itself at start-up to install its entitlement
// checks (org.elasticsearch.entitlement.bootstrap.EntitlementBootstrap loads the one jar in
// lib/entitlement-agent/, passing the initializer's class name). Elastic ships it only inside its
// distributions, not on Maven Central; this is the same contract: look the class up and call its
// static initialize(Instrumentation).
package kubevents.stack;

import java.lang.instrument.Instrumentation;

public final class EntitlementAgent {
    public static void agentmain(String initializerClass, Instrumentation inst) throws Exception {
        Class.forName(initializerClass).getMethod("initialize", Instrumentation.class).invoke(null, inst);
    }
}
