// The local broker's users and ACLs, through Kafka's own Admin API (`fleetpulse stack up`,
// `fleetpulse stack rotate-password`). Run by the stack with Java's source launcher:
//
//   java -cp '<libs>/*' Security.java <admin-client.properties>
//
// It connects as the broker's own identity (mutual TLS on the inter-broker listener, a super
// user), so it works before any SCRAM user exists. Commands come on standard input, one per
// line, so no password is ever on a command line:
//
//   user NAME PASSWORD      create NAME's SCRAM-SHA-512 credential unless NAME has one
//   password NAME PASSWORD  set NAME's credential (a rotation)
//   acl NAME RESOURCE PATTERN RESOURCE_NAME OPERATION
//                           allow User:NAME OPERATION on the resource (TOPIC, GROUP, CLUSTER;
//                           LITERAL or PREFIXED)
//   sync NAME               after the acl lines: delete NAME's ALLOW bindings not listed
//   describe                print the controller quorum ("leader ID epoch E", "voter ID
//                           lag L") and every under-replicated partition ("under-replicated
//                           TOPIC PARTITION leader=ID isr=[...] replicas=[...]")
//
// It prints one line per change ("created user producer", "added ACL ..."), never a password.
import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.ListTopicsOptions;
import org.apache.kafka.clients.admin.QuorumInfo;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialAlteration;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AccessControlEntryFilter;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourcePatternFilter;
import org.apache.kafka.common.resource.ResourceType;

public class Security {
  private static final int ITERATIONS = 8192;
  private static final long TIMEOUT_S = 60;

  public static void main(String[] args) throws Exception {
    if (args.length != 1) {
      System.err.println("usage: Security.java <admin-client.properties> < commands");
      System.exit(2);
    }
    Properties props = new Properties();
    try (FileInputStream in = new FileInputStream(args[0])) {
      props.load(in);
    }
    Map<String, String> ensure = new java.util.LinkedHashMap<>();
    Map<String, String> set = new java.util.LinkedHashMap<>();
    Set<AclBinding> wanted = new LinkedHashSet<>();
    Set<String> synced = new LinkedHashSet<>();
    boolean describe = false;
    BufferedReader reader =
        new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    String line;
    int number = 0;
    while ((line = reader.readLine()) != null) {
      number++;
      String[] f = line.trim().split("\\s+");
      if (f.length == 0 || f[0].isEmpty()) {
        continue;
      }
      switch (f[0]) {
        case "user" -> ensure.put(arg(f, 1, number), arg(f, 2, number));
        case "password" -> set.put(arg(f, 1, number), arg(f, 2, number));
        case "acl" -> wanted.add(binding(f, number));
        case "sync" -> synced.add(arg(f, 1, number));
        case "describe" -> describe = true;
        default -> fail("line " + number + ": unknown command " + f[0]);
      }
    }
    try (Admin admin = Admin.create(props)) {
      if (describe) {
        describe(admin);
      }
      Set<String> existing = new HashSet<>();
      if (!ensure.isEmpty()) {
        existing.addAll(
            admin.describeUserScramCredentials().users().get(TIMEOUT_S, TimeUnit.SECONDS));
      }
      List<UserScramCredentialAlteration> changes = new ArrayList<>();
      List<String> said = new ArrayList<>();
      ScramCredentialInfo info = new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, ITERATIONS);
      for (Map.Entry<String, String> e : ensure.entrySet()) {
        if (!existing.contains(e.getKey()) && !set.containsKey(e.getKey())) {
          changes.add(new UserScramCredentialUpsertion(e.getKey(), info, e.getValue()));
          said.add("created user " + e.getKey());
        }
      }
      for (Map.Entry<String, String> e : set.entrySet()) {
        changes.add(new UserScramCredentialUpsertion(e.getKey(), info, e.getValue()));
        said.add("set the password of user " + e.getKey());
      }
      if (!changes.isEmpty()) {
        admin.alterUserScramCredentials(changes).all().get(TIMEOUT_S, TimeUnit.SECONDS);
        said.forEach(System.out::println);
      }
      if (!wanted.isEmpty() || !synced.isEmpty()) {
        Set<AclBinding> present =
            new HashSet<>(admin.describeAcls(AclBindingFilter.ANY).values().get(TIMEOUT_S, TimeUnit.SECONDS));
        List<AclBinding> add = new ArrayList<>();
        for (AclBinding b : wanted) {
          if (!present.contains(b)) {
            add.add(b);
          }
        }
        if (!add.isEmpty()) {
          admin.createAcls(add).all().get(TIMEOUT_S, TimeUnit.SECONDS);
          add.forEach(b -> System.out.println("added ACL " + describe(b)));
        }
        List<AclBindingFilter> remove = new ArrayList<>();
        for (AclBinding b : present) {
          String principal = b.entry().principal();
          boolean ours =
              principal.startsWith("User:") && synced.contains(principal.substring(5));
          if (ours && b.entry().permissionType() == AclPermissionType.ALLOW && !wanted.contains(b)) {
            remove.add(b.toFilter());
          }
        }
        if (!remove.isEmpty()) {
          admin.deleteAcls(remove).all().get(TIMEOUT_S, TimeUnit.SECONDS);
          for (AclBindingFilter r : remove) {
            System.out.println("removed ACL " + r);
          }
        }
      }
    }
  }

  private static void describe(Admin admin) throws Exception {
    QuorumInfo quorum =
        admin.describeMetadataQuorum().quorumInfo().get(TIMEOUT_S, TimeUnit.SECONDS);
    System.out.println("leader " + quorum.leaderId() + " epoch " + quorum.leaderEpoch());
    long end = quorum.highWatermark();
    for (QuorumInfo.ReplicaState voter : quorum.voters()) {
      System.out.println(
          "voter " + voter.replicaId() + " lag " + Math.max(0, end - voter.logEndOffset()));
    }
    Set<String> topics =
        admin.listTopics(new ListTopicsOptions().listInternal(true)).names()
            .get(TIMEOUT_S, TimeUnit.SECONDS);
    Map<String, TopicDescription> described =
        admin.describeTopics(topics).allTopicNames().get(TIMEOUT_S, TimeUnit.SECONDS);
    for (TopicDescription topic : new TreeMap<>(described).values()) {
      for (TopicPartitionInfo p : topic.partitions()) {
        if (p.isr().size() < p.replicas().size()) {
          System.out.println(
              "under-replicated " + topic.name() + " " + p.partition()
                  + " leader=" + (p.leader() == null ? -1 : p.leader().id())
                  + " isr=" + ids(p.isr()) + " replicas=" + ids(p.replicas()));
        }
      }
    }
  }

  private static String ids(List<Node> nodes) {
    return nodes.stream().map(n -> String.valueOf(n.id())).toList().toString().replace(" ", "");
  }

  private static AclBinding binding(String[] f, int number) {
    String name = arg(f, 1, number);
    ResourceType type = ResourceType.fromString(arg(f, 2, number));
    PatternType pattern = PatternType.fromString(arg(f, 3, number));
    String resource = arg(f, 4, number);
    AclOperation operation = AclOperation.fromString(arg(f, 5, number));
    if (type == ResourceType.UNKNOWN || pattern == PatternType.UNKNOWN
        || operation == AclOperation.UNKNOWN) {
      fail("line " + number + ": bad acl " + String.join(" ", f));
    }
    return new AclBinding(
        new ResourcePattern(type, resource, pattern),
        new AccessControlEntry("User:" + name, "*", operation, AclPermissionType.ALLOW));
  }

  private static String describe(AclBinding b) {
    return b.entry().principal() + " " + b.entry().operation() + " "
        + b.pattern().resourceType() + ":" + b.pattern().patternType() + ":" + b.pattern().name();
  }

  private static String arg(String[] f, int i, int number) {
    if (f.length <= i) {
      fail("line " + number + ": missing argument " + i + " of " + f[0]);
    }
    return f[i];
  }

  private static void fail(String message) {
    System.err.println(message);
    System.exit(2);
  }
}
