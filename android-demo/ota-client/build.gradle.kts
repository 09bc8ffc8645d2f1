// Pure Kotlin on the JVM: no Android dependency, so the same module runs in the app, on a server
// and under generic TUF client test suites (bin/edgekit-tuf-client). bin/build compiles it without
// Gradle with Debian's kotlinc 1.3, which is what the machines without Google's Maven have.
plugins {
    id("org.jetbrains.kotlin.jvm")
    application
}

kotlin {
    jvmToolchain(17)
}

application {
    mainClass.set("dev.edgekit.ota.Main")
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    workingDir = file("src/test/resources")  // VectorsTest reads vectors.json from there
}
